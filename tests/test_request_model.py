"""The one request model: each protocol's translation into it, and its rendering back out
(pure functions over bodies and runner events; no server, no MLX)."""

from __future__ import annotations

import pydantic
import pytest
from openai.lib._parsing._completions import type_to_response_format_param

from jupyter_mlx_manager.inference.images import ImageLimits
from jupyter_mlx_manager.inference.request import InvalidParam
from jupyter_mlx_manager.inference.service import Usage
from jupyter_mlx_manager.protocols import anthropic, openai_chat, responses

LIMIT = 512


def _command(request):
    """The runner's command for `request` as the service sends it: after the server's limit."""
    request.within(LIMIT)
    return request.command()


M = "local/tiny-demo"


class City(pydantic.BaseModel):
    name: str
    population: int


def test_chat_translation():
    body = {
        "model": M,
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city": "P"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18"},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
        "top_k": 5, "stop": "x", "max_completion_tokens": 7,
    }  # fmt: skip
    command = _command(openai_chat.parse(body, "chat"))
    assert command["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city": "P"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18"},
    ]  # fmt: skip
    assert command["tools"] == [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]
    assert (command["top_k"], command["stop"], command["max_tokens"]) == (5, ["x"], 7)
    assert command["response_format"] is None and command["reasoning"] is None
    assert "tool_choice" not in command
    none = _command(openai_chat.parse({**body, "tool_choice": "none"}, "chat"))
    assert none["tools"] is None
    named = {**body, "tool_choice": {"type": "function", "function": {"name": "w"}}}
    assert _command(openai_chat.parse(named, "chat"))["tool_choice"] == "required"
    with pytest.raises(InvalidParam) as caught:
        openai_chat.parse({**body, "tool_choice": {"type": "function", "function": {"name": "zz"}}}, "chat")
    assert caught.value.param == "tool_choice"
    # Above the server's limit is clamped to it (agents ask for 32,000), not refused.
    clamped = openai_chat.parse({**body, "max_completion_tokens": LIMIT + 1}, "chat")
    clamped.within(LIMIT)  # the service's policy: above the server's limit is clamped, not refused
    assert clamped.max_tokens == LIMIT
    with pytest.raises(InvalidParam) as caught:  # no token count at all
        openai_chat.parse({**body, "max_completion_tokens": 2**31}, "chat")
    assert caught.value.param == "max_completion_tokens"


def test_chat_response_format_and_the_sdks_parse_payload():
    base = {"model": M, "messages": [{"role": "user", "content": "x"}]}
    fmt = type_to_response_format_param(City)  # exactly what client.chat.completions.parse sends
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    request = openai_chat.parse({**base, "response_format": fmt}, "chat")
    assert _command(request)["response_format"] == {"type": "json_schema", "schema": fmt["json_schema"]["schema"]}
    assert request.output_format.strict and request.output_format.name == "City"
    assert request.param("response_format") == "response_format"
    json_object = openai_chat.parse({**base, "response_format": {"type": "json_object"}}, "chat")
    assert _command(json_object)["response_format"] == {"type": "json_object"}
    text = openai_chat.parse({**base, "response_format": {"type": "text"}}, "chat")
    assert _command(text)["response_format"] is None
    for bad in ({"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": 3}}, 7):
        with pytest.raises(InvalidParam) as caught:
            openai_chat.parse({**base, "response_format": bad}, "chat")
        assert caught.value.param == "response_format"


def test_images_are_parts_checked_in_the_server():
    body = {"model": M, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}  # fmt: skip
    with pytest.raises(InvalidParam) as caught:  # not a PNG (inference/images.py; tests/test_vision.py)
        openai_chat.parse(body, "chat").check_images(ImageLimits())
    assert caught.value.code == "invalid_image"


def test_messages_translation():
    body = {
        "model": M, "max_tokens": 9, "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": ""},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "P"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18"}]},
                {"type": "text", "text": "Thanks"}]},
        ],
        "tools": [{"name": "w", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"}, "stop_sequences": ["END"], "top_k": 3,
        "thinking": {"type": "disabled"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }  # fmt: skip
    request = anthropic.parse(body)
    command = _command(request)
    assert command["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "P"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18"},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip
    assert command["tool_choice"] == "required" and command["stop"] == ["END"] and command["top_k"] == 3
    assert command["reasoning"] is False and command["max_tokens"] == 9
    assert command["response_format"] == {"type": "json_schema", "schema": {"type": "object"}}
    assert request.param("response_format") == "output_config.format" and request.param("stop") == "stop_sequences"
    for bad, param in (
        ({**body, "max_tokens": None}, "max_tokens"),
        ({**body, "temperature": 1.5}, "temperature"),
        ({**body, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({**body, "messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages[0].content[0]"),
    ):
        with pytest.raises(InvalidParam) as caught:
            anthropic.parse(bad)
        assert caught.value.param == param
    assert anthropic.parse({**body, "max_tokens": None}, count_only=True).kind == "chat"


def _usage(**fields) -> Usage:
    return Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=5, **fields)


def test_messages_rendering():
    r = anthropic.MessagesRenderer("msg_1", M)
    r.usage = _usage(finish_reason="stop", stop_sequence="END")
    events = r.opening()
    for ev in ({"ev": "reasoning", "text": "hm"}, {"ev": "text", "text": "Hi"}, {"ev": "text", "text": "!"},
               {"ev": "tool_call", "call": {"name": "w", "arguments": '{"city": "P"}'}}):  # fmt: skip
        events += r.feed(ev)
    events += r.closing()
    names = [n for n, _ in events]
    assert names == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  # thinking
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  # text
        "content_block_start", "content_block_delta", "content_block_stop",  # tool_use
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    body = r.body()
    assert [b["type"] for b in body["content"]] == ["thinking", "text", "tool_use"]
    assert body["content"][0]["thinking"] == "hm" and body["content"][1]["text"] == "Hi!"
    assert body["content"][2]["input"] == {"city": "P"}
    assert body["usage"]["input_tokens"] == 6 and body["usage"]["cache_read_input_tokens"] == 4
    r.usage = _usage(finish_reason="tool_calls")
    assert r.body()["stop_reason"] == "tool_use"
    r.usage = _usage(finish_reason="length")
    assert r.body()["stop_reason"] == "max_tokens"
    assert anthropic.anthropic_error(529, "busy")["error"]["type"] == "overloaded_error"
    assert anthropic.anthropic_error(403, "no")["error"]["type"] == "permission_error"


def test_chat_rendering_of_reasoning():
    r = openai_chat.ChatRenderer("chatcmpl-1", 0, M)
    r.usage = _usage(finish_reason="stop")
    chunks = r.feed({"ev": "reasoning", "text": "hm"}) + r.feed({"ev": "text", "text": "Hi"})
    assert chunks[0][1]["choices"][0]["delta"] == {"reasoning_content": "hm"}
    message = r.body()["choices"][0]["message"]
    assert message["reasoning_content"] == "hm" and message["content"] == "Hi"


def test_responses_translation_and_rendering():
    history = [
        {"type": "message", "role": "user", "content": "Weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "w", "arguments": "{}"},
    ]
    body = {
        "model": M, "instructions": "Be brief.", "max_output_tokens": 5,
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": "18"},
                  {"role": "user", "content": [{"type": "input_text", "text": "And?"}]}],
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
    }  # fmt: skip
    request = responses.parse(body, history)
    command = _command(request)
    assert command["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18"},
        {"role": "user", "content": "And?"},
    ]  # fmt: skip
    assert command["response_format"] == {"type": "json_schema", "schema": {"type": "object"}}
    assert command["max_tokens"] == 5
    # A runner error about the schema names the Responses field.
    assert request.param("response_format") == "text.format"
    clamped = responses.parse({**body, "max_output_tokens": LIMIT + 1})
    clamped.within(LIMIT)
    assert clamped.max_tokens == LIMIT
    with pytest.raises(InvalidParam) as caught:
        responses.parse({**body, "max_output_tokens": 0})
    assert caught.value.param == "max_output_tokens"

    r = responses.ResponsesRenderer("resp_1", body, request)
    r.usage = _usage(finish_reason="length", reasoning_tokens=1)
    events = r.opening()
    for ev in ({"ev": "reasoning", "text": "hm"}, {"ev": "text", "text": "Hi"},
               {"ev": "tool_call", "call": {"name": "w", "arguments": "{}"}}):  # fmt: skip
        events += r.feed(ev)
    events += r.closing()
    names = [n for n, _ in events]
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.incomplete",
    ]  # fmt: skip
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    final = r.body()
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output_text"] == "Hi" and final["usage"]["output_tokens_details"]["reasoning_tokens"] == 1
    assert events[0][1]["response"]["output"] == [] and events[0][1]["response"]["status"] == "in_progress"


def test_system_messages_mid_conversation_kept_or_folded():
    from jupyter_mlx_manager.runner.templates import place_system_messages

    messages = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "system", "content": "note"},
        {"role": "user", "content": "u2"},
        {"role": "system", "content": "last"},
    ]
    kept = place_system_messages(messages, lambda: True)
    assert kept[0] == {"role": "system", "content": "A\n\nB"} and kept[1:] == messages[2:]
    folded = place_system_messages(messages, lambda: False)
    assert folded == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "note\n\nu2\n\nlast"},
    ]
    asked = []
    plain = [{"role": "user", "content": "x"}]
    assert place_system_messages(plain, lambda: asked.append(1) or True) == plain and not asked
    ending = place_system_messages([*messages[2:4], {"role": "system", "content": "n"}], lambda: False)
    assert ending[-1] == {"role": "user", "content": "n"}  # after an assistant turn: a user turn of its own


def test_messages_system_role_and_tool_result_images():
    body = {
        "model": M, "max_tokens": 50_000,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": [{"type": "text", "text": "note", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "shot:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}]}]},
        ],
        "thinking": {"type": "adaptive"}, "context_management": {"edits": []}, "unknown": 1,
    }  # fmt: skip
    request = anthropic.parse(body)
    request.within(LIMIT)  # Claude Code's 32,000 clamped by the service
    assert request.max_tokens == LIMIT and request.reasoning is True
    command = _command(request)
    assert command["messages"][1] == {"role": "system", "content": "note"}
    assert command["messages"][2] == {"role": "tool", "tool_call_id": "t", "content": "shot:[image omitted]"}
    with pytest.raises(InvalidParam) as caught:
        anthropic.parse({**body, "messages": [{"role": "wizard", "content": "x"}]})
    assert "Unexpected role" in caught.value.message


def test_completions_prompts_and_echo_rendering():
    base = {"model": M, "max_tokens": 0, "echo": True, "logprobs": 1}
    requests = openai_chat.parse_completions({**base, "prompt": [[1, 2], [3]]})
    assert [_command(r)["prompt"] for r in requests] == [[1, 2], [3]]
    assert all(_command(r)["echo"] and r.max_tokens == 0 for r in requests)
    assert [r.prompt for r in openai_chat.parse_completions({**base, "prompt": ["a", "b"]})] == ["a", "b"]
    for bad in ([], [[]], ["a", ""], [[1], [-1]], [["a"]], [1.5]):
        with pytest.raises(InvalidParam):
            openai_chat.parse_completions({**base, "prompt": bad})
    with pytest.raises(InvalidParam) as caught:  # generating nothing needs echo
        openai_chat.parse_completions({**base, "echo": False, "prompt": "a"})
    assert caught.value.param == "max_tokens"

    r = openai_chat.CompletionRenderer("cmpl-1", 0, M, prompts=2, include_usage=False, logprobs=True)
    r.usages = [_usage(finish_reason="length"), _usage(finish_reason="stop")]
    first = {"token": "Hé", "bytes": list("Hé".encode()), "logprob": None, "top_logprobs": []}
    second = {"token": "llo", "bytes": list(b"llo"), "logprob": -1.5,
              "top_logprobs": [{"token": "x", "bytes": [120], "logprob": -0.5}]}  # fmt: skip
    r.feed({"ev": "prompt", "index": 1, "text": "Héllo", "logprobs": [first, second]})
    r.feed({"ev": "text", "index": 1, "text": "!", "logprobs": [{**second, "token": "!", "bytes": [33]}]})
    body = r.body()
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["choices"][1]["text"] == "Héllo!"
    logprobs = body["choices"][1]["logprobs"]
    assert logprobs["token_logprobs"] == [None, -1.5, -1.5] and logprobs["top_logprobs"][0] is None
    assert logprobs["text_offset"] == [0, 2, 5] and logprobs["top_logprobs"][1] == {"x": -0.5, "llo": -1.5}
    assert body["usage"]["prompt_tokens"] == 20 and [c["finish_reason"] for c in body["choices"]] == ["length", "stop"]


def test_responses_tool_sets():
    fn = {"type": "function", "name": "run", "parameters": {"type": "object"}}
    body = {
        "model": M, "input": "x",
        "tools": [fn, {"type": "namespace", "name": "a", "description": "", "tools": [fn]},
                  {"type": "namespace", "name": "b", "description": "", "tools": [{**fn, "name": "only"}]},
                  {"type": "web_search"}, {"type": "custom", "name": "free"}],
    }  # fmt: skip
    tools = responses.tool_set(body)
    assert [t.name for t in tools.tools] == ["run", "a__run", "only", "free"]  # renamed only where names repeat
    assert tools.origin["a__run"] == ("function", "a", "run") and tools.hosted == {"web_search"}
    history = [{"type": "function_call", "call_id": "c", "name": "run", "namespace": "a", "arguments": "{}"}]
    command = _command(responses.parse(body, history))
    assert command["messages"][0]["tool_calls"][0]["function"]["name"] == "a__run"
    r = responses.ResponsesRenderer("resp_1", body, responses.parse(body))
    r.usage = _usage(finish_reason="tool_calls")
    r.feed({"ev": "tool_call", "call": {"name": "a__run", "arguments": "{}"}})
    r.feed({"ev": "tool_call", "call": {"name": "free", "arguments": '{"input": "ls -la"}'}})
    output = r.body()["output"]
    assert (output[0]["type"], output[0]["name"], output[0]["namespace"]) == ("function_call", "run", "a")
    assert (output[1]["type"], output[1]["name"], output[1]["input"]) == ("custom_tool_call", "free", "ls -la")
    assert r.body()["tools"] == body["tools"]  # listed back unchanged, the hosted one too
