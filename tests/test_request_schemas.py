"""The request bodies are declared once (protocols/models.py): the OpenAPI document lists every
field they accept, and a refused field is the 400 the protocol always gave, naming it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from jupyter_mlx_manager import openapi
from jupyter_mlx_manager.inference.audio import parse_speech
from jupyter_mlx_manager.inference.embeddings import parse_embeddings
from jupyter_mlx_manager.inference.request import InvalidParam
from jupyter_mlx_manager.protocols import anthropic, models, openai_chat, responses

M = "local/tiny-demo"
ROUTES = {
    "/mlx/v1/chat/completions": models.ChatCompletionRequest,
    "/mlx/v1/completions": models.CompletionRequest,
    "/mlx/v1/messages": models.MessagesRequest,
    "/mlx/v1/messages/count_tokens": models.CountTokensRequest,
    "/mlx/v1/responses": models.ResponsesRequest,
    "/mlx/v1/responses/input_tokens": models.ResponsesRequest,
    "/mlx/v1/embeddings": models.EmbeddingsRequest,
    "/mlx/v1/audio/speech": models.SpeechBody,
}


def _fields(model: type[BaseModel]) -> set[str]:
    """The names a body of `model` is read by (aliases: `schema` for `schema_`)."""
    return {f.alias or name for name, f in model.model_fields.items()}


def _component(document: dict, schema: dict) -> dict:
    return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]


def _nested(model: type[BaseModel]) -> set[type[BaseModel]]:
    """`model` and every model its fields name, however deep."""
    seen: set[type[BaseModel]] = set()
    todo = [model]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for field in current.model_fields.values():
            todo += _models_in(field.annotation)
    return seen


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_openapi_request_schemas_list_every_accepted_field(path):
    document = openapi.document()
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    model = ROUTES[path]
    assert set(_component(document, body)["properties"]) == _fields(model)
    for nested in _nested(model):  # every nested shape is a component naming all its fields
        assert set(document["components"]["schemas"][nested.__name__]["properties"]) == _fields(nested)


def test_the_chat_body_documents_what_it_accepts():
    """The fields the hand-written description lacked (sampling, logprobs, tools, formats)."""
    properties = openapi.document()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    for name in (
        "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs", "top_logprobs",
        "response_format", "tool_choice", "tools", "n", "user", "keep_alive",
    ):  # fmt: skip
        assert name in properties, name
    assert set(models.ChatCompletionRequest.model_json_schema()["required"]) == {"model", "messages"}


CHAT = {"model": M, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"temperature": 2.5}, "temperature", "temperature must be a number from 0 to 2"),
        ({"temperature": True}, "temperature", "temperature must be a number from 0 to 2"),
        ({"top_p": "0.5"}, "top_p", "top_p must be a number from 0 to 1"),
        ({"n": 2}, "n", "only n = 1 is supported"),
        ({"seed": 1.5}, "seed", "seed must be an integer"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop must be a non-empty string or a list of at most 4 of them"),
        ({"stop": ""}, "stop", "stop must be a non-empty string or a list of at most 4 of them"),
        ({"logit_bias": {"x1": 1}}, "logit_bias", "logit_bias must map token ids to numbers from -100 to 100"),
        ({"logit_bias": {"1": 101}}, "logit_bias", "logit_bias must map token ids to numbers from -100 to 100"),
        ({"stream": "yes"}, "stream", "stream must be true or false"),
        ({"stream_options": 3}, "stream_options", "stream_options must be an object"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be an integer from 1 to 2147483647"),
        ({"max_completion_tokens": -1}, "max_completion_tokens", None),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "top_logprobs must be an integer from 0 to 20"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs: true"),
        ({"model": ""}, "model", "model is required"),
        ({"messages": []}, "messages", "messages must be a non-empty list"),
        (
            {"tool_choice": {"type": "function", "function": {}}},
            "tool_choice",
            "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}",
        ),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}, "messages[1].role", None),
    ],
)
def test_chat_refusals_name_the_field(extra, param, message):
    with pytest.raises(InvalidParam) as caught:
        openai_chat.parse({**CHAT, **extra}, "chat")
    assert caught.value.param == param and caught.value.status_code == 400
    if message:
        assert caught.value.message == message


def test_unknown_fields_stay_accepted_and_defaults_hold():
    request = openai_chat.parse({**CHAT, "metadata": {"a": 1}, "parallel_tool_calls": False}, "chat")
    assert (request.temperature, request.top_p, request.stop, request.logit_bias) == (1.0, 1.0, [], {})
    request = openai_chat.parse({**CHAT, "stop": "END", "logit_bias": {"007": -5}, "temperature": 0}, "chat")
    assert request.stop == ["END"] and request.logit_bias == {"7": -5.0} and request.temperature == 0.0
    messages = anthropic.parse({"model": M, "max_tokens": 5, "messages": CHAT["messages"], "foo": 1})
    assert messages.max_tokens == 5 and messages.tool_choice == "auto" and messages.reasoning is None
    tools = [{"name": "w", "input_schema": {"type": "object"}}]
    for choice, expected in (({"type": "any"}, "required"), ({"type": "tool", "name": "w"}, {"name": "w"})):
        body = {"model": M, "max_tokens": 5, "messages": CHAT["messages"], "tools": tools, "tool_choice": choice}
        assert anthropic.parse({**body, "thinking": {"type": "adaptive"}}).tool_choice == expected
    chat_tools = [{"type": "function", "function": {"name": "w"}}]
    choice = {"type": "function", "function": {"name": "w"}}
    assert openai_chat.parse({**CHAT, "tools": chat_tools, "tool_choice": choice}, "chat").tool_choice == {"name": "w"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 1.5}, "temperature"),  # Anthropic's range is 0 to 1
        ({"seed": 2**63}, "seed"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"output_config": []}, "output_config"),
        ({"output_config": {"format": {"type": "text"}}}, "output_config.format"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"tool_choice": {"type": "anything"}}, "tool_choice"),
        ({"thinking": {"type": "on"}}, "thinking"),
        ({"model": None}, "model"),
    ],
)
def test_messages_refusals_name_the_field(extra, param):
    body = {"model": M, "max_tokens": 5, "messages": CHAT["messages"], **extra}
    with pytest.raises(InvalidParam) as caught:
        anthropic.parse(body)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"include": "x"}, "include"),
        ({"reasoning": "high"}, "reasoning"),
        ({"instructions": 3}, "instructions"),
        ({"store": "no"}, "store"),
        ({"previous_response_id": "x" * 129}, "previous_response_id"),
        ({"input": 3}, "input"),
        ({"text": "json"}, "text"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_responses_refusals_name_the_field(extra, param):
    with pytest.raises(InvalidParam) as caught:
        responses.parse({"model": M, "input": "Hi", **extra}, [])
    assert caught.value.param == param


def test_embeddings_and_speech_refusals_keep_their_codes():
    for extra, param, code in (
        ({"encoding_format": "int8"}, "encoding_format", "invalid_value"),
        ({"dimensions": 0}, "dimensions", "invalid_value"),
        ({"input": None}, "input", "invalid_input"),
        ({"model": 3}, "model", "invalid_model"),
    ):
        with pytest.raises(InvalidParam) as caught:
            parse_embeddings({"model": M, "input": "a", **extra})
        assert (caught.value.param, caught.value.code) == (param, code), extra
    for extra, param, code in (
        ({"voice": "v" * 101}, "voice", "invalid_value"),
        ({"response_format": "mp3"}, "response_format", "invalid_value"),
        ({"speed": 1.5}, "speed", "unsupported"),
    ):
        with pytest.raises(InvalidParam) as caught:
            parse_speech({"model": M, "input": "Hello", **extra})
        assert (caught.value.param, caught.value.code) == (param, code), extra
    assert parse_speech({"model": M, "input": "Hello", "speed": 1.0, "voice": "af"}).voice == "af"


def test_token_ids_are_whole_numbers_as_json_writes_them():
    """JSON Schema (and the SDKs' servers) read 2.0 as the integer 2: completions' prompt and
    embeddings' input take it, as the integer; fractions, booleans and negatives stay refused."""
    assert openai_chat.prompts([5, 6.0]) == [[5, 6]]
    assert openai_chat.prompts([[5.0], "text"]) == [[5], "text"]
    assert parse_embeddings({"model": M, "input": [[1.0, 2]]}).inputs == [[1, 2]]
    for bad in ([1.5], [True], [-1], [[]], []):
        with pytest.raises(InvalidParam):
            openai_chat.prompts(bad)
    with pytest.raises(InvalidParam) as caught:
        parse_embeddings({"model": M, "input": [3, -2.0]})
    assert caught.value.code == "invalid_token_id"


async def test_a_live_server_answers_in_each_protocols_envelope(api):
    """Through the real handlers: a field the models refuse is a 400 in the protocol's own
    envelope, naming the field; the served description lists the fields the models accept."""
    document = (await api("GET", "mlx/api/openapi.json")).body
    assert set(document["components"]["schemas"]["ChatCompletionRequest"]["properties"]) == _fields(
        models.ChatCompletionRequest
    )
    for path, body, param in (
        ("mlx/v1/chat/completions", {**CHAT, "top_p": 2}, "top_p"),
        ("mlx/v1/completions", {"model": M, "prompt": "a", "echo": "yes"}, "echo"),
        ("mlx/v1/responses", {"model": M, "input": "a", "include": [1]}, "include"),
        ("mlx/v1/embeddings", {"model": M, "input": "a", "dimensions": -1}, "dimensions"),
        ("mlx/v1/audio/speech", {"model": M, "input": "a", "speed": 2}, "speed"),
    ):
        reply = await api("POST", path, body=body)
        assert reply.code == 400, (path, reply.body)
        assert set(reply.body["error"]) >= {"message", "type", "param"} and reply.body["error"]["param"] == param
    reply = await api("POST", "mlx/v1/messages", body={"model": M, "max_tokens": 5, "messages": [], "top_k": -1})
    assert reply.code == 400 and reply.body["type"] == "error"
    assert reply.body["error"] == {
        "type": "invalid_request_error",
        "message": "top_k must be an integer from 0 to 1000000",
    }
