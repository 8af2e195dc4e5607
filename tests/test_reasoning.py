"""Reasoning apart from the answer, on the scripted thinking demo model (`demo-model --reasoning`).

Its vocabulary has `<think>`/`</think>` (how mlx-lm detects a thinking model) and, decoding
greedily, it answers `<think>SCRIPTED_REASONING</think>` then `SCRIPTED_ANSWER`. Driven over
the runner's real protocol.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from test_engine import Runner

from jupyter_mlx_manager.models.demo import SCRIPTED_ANSWER, SCRIPTED_REASONING
from jupyter_mlx_manager.runner.text import TextFilter

ANSWER = "".join(SCRIPTED_ANSWER)
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoning-models")
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(root / "models"), "--name", "thinker", "--reasoning"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    runner = Runner(Path(root / "models" / "thinker"))
    yield runner
    runner.process.kill()
    runner.process.wait()


def _chat(runner: Runner, rid: str, **options) -> None:
    runner._queue(rid)
    command = {"op": "generate", "id": rid, "kind": "chat", "messages": MESSAGES, "max_tokens": 64,
               "temperature": 0.0, "top_p": 1.0, "seed": None, "logit_bias": {}, "stop": [], **options}  # fmt: skip
    runner.send(command)


def _result(runner: Runner, rid: str) -> tuple[str, str, dict]:
    text, events = runner.collect(rid)
    reasoning = "".join(e["text"] for e in events if e["ev"] == "reasoning")
    return reasoning, text, events[-1]


def test_thinking_comes_as_reasoning_events_and_the_answer_as_text(runner):
    _chat(runner, "plain")
    reasoning, text, done = _result(runner, "plain")
    assert (reasoning, text) == (SCRIPTED_REASONING, ANSWER)
    assert done["finish_reason"] == "stop" and done["reasoning_tokens"] >= 3
    assert done["completion_tokens"] == len(SCRIPTED_ANSWER) + 3


def test_stop_strings_end_the_answer_not_the_reasoning(runner):
    _chat(runner, "stop", stop=["42"])
    assert _result(runner, "stop")[:2] == (SCRIPTED_REASONING, "Hello! The answer is ")
    _chat(runner, "stop-in-thinking", stop=["greets"])  # only in the reasoning: the answer is whole
    reasoning, text, done = _result(runner, "stop-in-thinking")
    assert (reasoning, text, done["finish_reason"]) == (SCRIPTED_REASONING, ANSWER, "stop")


def test_reasoning_false_disables_thinking_in_the_prompt(runner):
    _chat(runner, "quick", reasoning=False)
    reasoning, text, done = _result(runner, "quick")
    assert (reasoning, text, done["reasoning_tokens"]) == ("", ANSWER, 0)


def test_reasoning_is_apart_in_a_batch_too(runner):
    for i in range(4):
        _chat(runner, f"batch-{i}", stop=["else"] if i % 2 else [])
    for i in range(4):
        reasoning, text, _ = _result(runner, f"batch-{i}")
        assert reasoning == SCRIPTED_REASONING
        assert text == (ANSWER.split("else")[0] if i % 2 else ANSWER)


def test_a_schema_applies_to_the_answer_after_the_reasoning(runner):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}  # fmt: skip
    for seed in range(3):
        _chat(runner, f"json-{seed}", temperature=1.0, seed=seed, max_tokens=200,
              response_format={"type": "json_schema", "schema": schema})  # fmt: skip
        reasoning, text, done = _result(runner, f"json-{seed}")
        assert done["finish_reason"] == "stop", done
        jsonschema.validate(json.loads(text), schema)


def test_the_text_filter_splits_reasoning_across_pieces():
    # Only chat requests are parsed for reasoning; the text filter itself on split markers:
    text_filter = TextFilter(stop=["END"], think_start="<think>", think_end="</think>")
    pieces = ["<thi", "nk>\nI think END", " ok</th", "ink>\n\nAnswer E", "ND more"]
    outs = [text_filter.feed(p) for p in pieces]
    assert "".join(o.reasoning for o in outs) == "I think END ok"
    assert "".join(o.text for o in outs) == "Answer "
    assert outs[-1].stopped
    opened = TextFilter(think_start="<think>", think_end="</think>", initial_state="reasoning")
    first, second = opened.feed("hmm</think>"), opened.feed("yes")
    assert (first.reasoning, second.text) == ("hmm", "yes")
