"""Structured output in the runner: a grammar mask on every sampled token (llguidance).

Driven over the runner's real protocol, on the random-weight demo model: whatever it samples
must parse and validate. Bounded schemas and seeded sampling (a random model under a JSON mask,
decoded greedily, can loop forever inside a string or a number).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from models import build_models
from test_engine import Runner
from tokenizers import Tokenizer
from waiting import wait_until

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
SCORES = {
    "type": "object",
    "properties": {
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["scores", "ok"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "where": {
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "level": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["unit", "level"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "where"],
    "additionalProperties": False,
}
LONG = {  # long enough to be running when others join
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 100, "maxLength": 120},
        "n": {"type": "integer", "maximum": 9},
    },
    "required": ["text", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_models(tmp_path_factory.mktemp("structured-models"), ["demo"]) / "demo"


@pytest.fixture(scope="module")
def runner(model):
    runner = Runner(model)
    yield runner
    runner.process.kill()
    runner.process.wait()


def _schema(schema: dict) -> dict:
    return {"type": "json_schema", "schema": schema}


def _submit(runner: Runner, rid: str, response_format=None, seed: int = 0, **options) -> None:
    runner.submit(rid, "Answer in JSON: ", max_tokens=400, temperature=1.0, seed=seed, logit_bias={},
                  response_format=response_format, **options)  # fmt: skip


def _valid(runner: Runner, rid: str, schema: dict) -> dict:
    text, events = runner.collect(rid)
    assert events[-1]["ev"] == "done", events[-1]
    assert events[-1]["finish_reason"] == "stop", (text, events[-1])
    value = json.loads(text)
    jsonschema.validate(value, schema)
    assert "  " not in text and "\n" not in text  # compact whitespace
    return value


@pytest.mark.parametrize("schema", [PERSON, SCORES, NESTED], ids=["person", "scores", "nested"])
def test_json_schema_output_validates_for_several_seeds(runner, schema):
    for seed in range(4):
        _submit(runner, f"alone-{id(schema)}-{seed}", _schema(schema), seed=seed)
        _valid(runner, f"alone-{id(schema)}-{seed}", schema)


def test_json_object_is_any_json_object(runner, model):
    # Any object is allowed, so random weights would ramble inside an endless string: the bias on
    # the closing tokens only shortens it (the mask still decides what is allowed).
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    closing = {str(i): 6.0 for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]) in ('"', "}", '"}')}
    for seed in range(4):
        runner.submit(f"object-{seed}", "JSON: ", max_tokens=400, temperature=1.0, seed=seed, logit_bias=closing,
                      response_format={"type": "json_object"})  # fmt: skip
        assert isinstance(_valid(runner, f"object-{seed}", {"type": "object"}), dict)


def test_a_batch_of_different_schemas_with_unconstrained_requests_mixed_in(runner):
    schemas = [PERSON, SCORES, NESTED, PERSON, SCORES, NESTED]
    for i, schema in enumerate(schemas):
        _submit(runner, f"mixed-{i}", _schema(schema), seed=100 + i)
        if i % 2:
            runner.submit(f"free-{i}", "tell me more ", max_tokens=24, temperature=1.0, seed=i)
    for i, schema in enumerate(schemas):
        _valid(runner, f"mixed-{i}", schema)
        if i % 2:
            text, events = runner.collect(f"free-{i}")
            assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 24


def test_a_constrained_request_keeps_its_output_when_others_join_and_leave(runner):
    # Alone first: the reference output for this seed.
    _submit(runner, "ref", _schema(LONG), seed=7)
    reference = _valid(runner, "ref", LONG)
    # Again: once it is decoding on the direct path, three others join (it migrates into the
    # batch), finish first, and it moves back to the direct path. Same seed, same output.
    migrations = runner.heartbeat["engine"]["migrations"] if runner.heartbeat else 0
    _submit(runner, "moving", _schema(LONG), seed=7)
    first = runner.next_event("moving")
    assert first["ev"] == "started"
    events = [first, runner.next_event("moving")]
    for i, schema in enumerate([PERSON, SCORES, NESTED]):
        _submit(runner, f"joiner-{i}", _schema(schema), seed=i)
    for i, schema in enumerate([PERSON, SCORES, NESTED]):
        _valid(runner, f"joiner-{i}", schema)
    while events[-1]["ev"] not in ("done", "error"):
        events.append(runner.next_event("moving"))
    assert events[-1]["finish_reason"] == "stop", events[-1]
    text = "".join(e["text"] for e in events if e["ev"] == "text")
    assert json.loads(text) == reference
    wait_until(  # the heartbeat (every 0.5 s) carries the scheduler's counters
        lambda: runner.heartbeat["engine"]["migrations"] > migrations, "a migration in the heartbeat", timeout=10
    )


def test_an_unsupported_schema_is_an_error_and_the_runner_keeps_serving(runner):
    _submit(runner, "unique", _schema({"type": "array", "uniqueItems": True}))
    _, events = runner.collect("unique")
    error = events[-1]
    assert error["ev"] == "error" and error["type"] == "invalid_request_error", error
    assert error["code"] == "unsupported_schema" and error["param"] == "response_format"
    assert "uniqueItems" in error["message"]
    _submit(runner, "negated", _schema({"not": {"type": "string"}}))
    assert runner.collect("negated")[1][-1]["code"] == "unsupported_schema"
    _submit(runner, "odd", {"type": "yaml"})
    assert runner.collect("odd")[1][-1]["code"] == "unsupported_schema"
    _submit(runner, "ill-typed", "json")
    assert runner.collect("ill-typed")[1][-1]["code"] == "invalid_field"
    _submit(runner, "after", _schema(PERSON), seed=3)
    _valid(runner, "after", PERSON)


def test_response_format_text_or_null_is_unconstrained(runner):
    for rid, response_format in (("text", {"type": "text"}), ("null", None)):
        runner.submit(rid, "tell me more ", max_tokens=12, response_format=response_format)
        _, events = runner.collect(rid)
        assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 12
