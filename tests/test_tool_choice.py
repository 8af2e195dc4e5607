"""`tool_choice` (none / auto / required / a named function) and `strict` tools, end to end.

On the random-weight demo model (its template offers tools in mlx-lm's `json_tools` format), a
forced call is constrained by the runner's grammar: whatever the weights, the reply is a call to
an offered function whose arguments validate against its schema. Bounded schemas and sampling,
as NOTES advises for random weights under a mask.
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest
from conftest import server_config
from models import build_models

MODEL = "local/tiny-demo"
MESSAGES = [{"role": "user", "content": "What now?"}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "boolean"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in SCHEMAS.items()]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("tool-choice-models"), ["tiny-demo"], tool_model="tool-demo")


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def clients(api, jp_http_port, jp_base_url):
    """`openai_client, anthropic_client = await clients()`: unmodified SDKs with a fresh API token."""

    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        base = f"http://localhost:{jp_http_port}{jp_base_url}mlx"
        return (
            openai.AsyncOpenAI(base_url=base + "/v1", api_key=token, max_retries=0),
            anthropic.AsyncAnthropic(base_url=base, api_key=token, max_retries=0),
        )

    return make


def _valid_call(call, names=tuple(SCHEMAS)) -> dict:
    assert call.type == "function" and call.function.name in names, call
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


async def test_required_and_named_force_a_valid_call_from_random_weights(clients):
    client, _ = await clients()
    params = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=120, temperature=1.0)
    for seed in range(3):
        reply = await client.chat.completions.create(**params, seed=seed, tool_choice="required")
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice
        _valid_call(choice.message.tool_calls[0])
    named = {"type": "function", "function": {"name": "add"}}
    for seed in range(3):
        reply = await client.chat.completions.create(**params, seed=seed, tool_choice=named)
        _valid_call(reply.choices[0].message.tool_calls[0], names=("add",))

    chunks = [c async for c in await client.chat.completions.create(**params, seed=7, tool_choice=named, stream=True)]
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert [tc.function.name for tc in calls] == ["add"] and chunks[-1].choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(calls[0].function.arguments), ADD)


async def test_none_offers_no_tools_and_parses_no_calls(clients):
    client, _ = await clients()
    for seed in range(3):
        reply = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=1.0, seed=seed
        )
        assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason != "tool_calls"
    # The template did not see the tools: the prompt is as short as without them.
    bare = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert reply.usage.prompt_tokens == bare.usage.prompt_tokens


async def test_unknown_named_function_and_required_without_tools_are_400(clients):
    client, _ = await clients()
    for extra in (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tool_choice": "required"},
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, **extra)
        assert caught.value.param == "tool_choice", extra


async def test_strict_tool_arguments_follow_the_schema(clients):
    client, _ = await clients()
    """The scripted model always calls get_weather with {"city": "Paris"}; a strict schema
    that allows only Lyon or Rome changes the arguments, not the call."""
    lyon = {"type": "object", "properties": {"city": {"enum": ["Lyon", "Rome"]}}, "required": ["city"],
            "additionalProperties": False}  # fmt: skip
    params = dict(
        model="local/tool-demo", messages=[{"role": "user", "content": "Weather?"}], temperature=0, max_tokens=40
    )
    loose = [{"type": "function", "function": {"name": "get_weather", "parameters": lyon}}]
    reply = await client.chat.completions.create(**params, tools=loose)
    assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    strict = [{"type": "function", "function": {"name": "get_weather", "parameters": lyon, "strict": True}}]
    reply = await client.chat.completions.create(**params, tools=strict)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), lyon)


async def test_anthropic_and_responses_tool_choice_force_calls(clients):
    client, claude = await clients()
    tools = [{"name": name, "input_schema": schema} for name, schema in SCHEMAS.items()]
    for choice, names in (
        ({"type": "any"}, tuple(SCHEMAS)),
        ({"type": "tool", "name": "get_weather"}, ("get_weather",)),
    ):
        message = await claude.messages.create(
            model=MODEL, messages=MESSAGES, tools=tools, tool_choice=choice, max_tokens=120,
            extra_body={"temperature": 1.0, "seed": 3},
        )  # fmt: skip
        uses = [b for b in message.content if b.type == "tool_use"]
        assert message.stop_reason == "tool_use" and len(uses) == 1 and uses[0].name in names
        jsonschema.validate(uses[0].input, SCHEMAS[uses[0].name])
    message = await claude.messages.create(
        model=MODEL, messages=MESSAGES, tools=tools, tool_choice={"type": "none"}, max_tokens=8
    )
    assert not [b for b in message.content if b.type == "tool_use"]

    functions = [{"type": "function", "name": name, "parameters": schema} for name, schema in SCHEMAS.items()]
    response = await client.responses.create(
        model=MODEL, input="What now?", tools=functions, max_output_tokens=120, temperature=1.0,
        tool_choice={"type": "function", "name": "add"},
    )  # fmt: skip
    calls = [item for item in response.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["add"]
    jsonschema.validate(json.loads(calls[0].arguments), ADD)
