"""Stop strings and tool-call blocks on streamed text (the runner's text filter)."""

from __future__ import annotations

import json

from jupyter_mlx_manager.runner.text import TextFilter


def _run(text_filter: TextFilter, pieces: list[str]):
    text, calls, stopped = "", [], False
    for piece in pieces:
        out = text_filter.feed(piece)
        text, calls, stopped = text + out.text, calls + out.tool_calls, stopped or out.stopped
        if stopped:
            break
    if not stopped:
        text += text_filter.flush().text
    return text, calls, stopped


def test_stop_split_across_pieces_stops_before_it():
    assert _run(TextFilter(stop=["END"]), ["hello E", "N", "D and more"]) == ("hello ", [], True)


def test_stop_never_deletes_text_elsewhere():
    # "lo" occurs inside "hello" before the stop string "lo!": nothing is removed there.
    assert _run(TextFilter(stop=["lo!"]), ["hel", "lo wor", "ld lo", "! tail"]) == ("hello world ", [], True)


def test_partial_match_that_turns_out_not_to_be_a_stop_is_released():
    assert _run(TextFilter(stop=["STOP"]), ["a ST", "AR b"]) == ("a STAR b", [], False)


def test_earliest_of_several_stops_wins():
    assert _run(TextFilter(stop=["zz", "b"]), ["a b c zz"]) == ("a ", [], True)


def test_tool_call_blocks_become_calls():
    parse = lambda text: json.loads(text)  # noqa: E731
    text_filter = TextFilter(tool_call_start="<tool_call>", tool_call_end="</tool_call>", parse_tool_call=parse)
    text, calls, _ = _run(
        text_filter,
        ["Sure. <tool", '_call>\n{"name": "get_weather", "argu', 'ments": {"city": "Paris"}}\n</tool_call>'],
    )
    assert text == "Sure. "
    assert calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_malformed_or_unfinished_tool_calls_stay_text():
    parse = lambda text: json.loads(text)  # noqa: E731
    text_filter = TextFilter(tool_call_start="<tool_call>", tool_call_end="</tool_call>", parse_tool_call=parse)
    assert _run(text_filter, ["<tool_call>not json</tool_call> ok"]) == (
        "<tool_call>not json</tool_call> ok",
        [],
        False,
    )
    text_filter = TextFilter(tool_call_start="<tool_call>", tool_call_end="</tool_call>", parse_tool_call=parse)
    assert _run(text_filter, ['x <tool_call>{"name": "f"']) == ('x <tool_call>{"name": "f"', [], False)


def test_without_tools_the_markers_are_plain_text():
    assert _run(
        TextFilter(tool_call_start="<tool_call>", tool_call_end="</tool_call>"), ["<tool_call>{}</tool_call>"]
    ) == (
        "<tool_call>{}</tool_call>",
        [],
        False,
    )
