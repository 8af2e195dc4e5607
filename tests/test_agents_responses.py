"""What Codex CLI sends to Responses, with the unmodified `openai` SDK against the real server:
namespace tool groups, custom (free-form) tools, hosted tools we cannot run, its reasoning /
include / prompt_cache_key / client_metadata fields, stateless turns (`store: false`, the
whole history as input, reasoning items sent back) and `responses/input_tokens`.

`local/tool-demo` always answers with one call of `get_weather` (decoding greedily).
"""

from __future__ import annotations

import json
import re

import openai
import pytest
from conftest import server_config
from models import build_models

TOOL_MODEL = "local/tool-demo"
SHELL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command",
    "strict": False,
    "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}},
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edits files",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" /(.|\\n)*/'},
}
WEB_SEARCH = {"type": "web_search", "external_web_access": False}
NAMESPACE = {"type": "namespace", "name": "weather", "description": "Weather tools", "tools": [WEATHER]}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("agents-responses-models"), ["tiny-demo"], tool_model="tool-demo")


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "codex"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


def codex_request(history: list) -> dict:
    """Codex's default request shape (its fields, not its prompt)."""
    return dict(
        model=TOOL_MODEL,
        instructions="You are Codex, a coding agent.",
        input=history,
        tools=[SHELL, APPLY_PATCH, NAMESPACE, WEB_SEARCH],
        tool_choice="auto",
        parallel_tool_calls=False,
        reasoning={"effort": "medium", "summary": "auto"},
        store=False,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="0b9a7c2e-session",
        temperature=0,
        max_output_tokens=20,
        extra_body={"client_metadata": {"originator": "codex_cli_rs"}, "text": {"verbosity": "medium"}},
    )


async def test_codex_turns_are_accepted_statelessly(sdk):
    client = await sdk()
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}]
    async with client.responses.stream(**codex_request(history)) as stream:
        first = await stream.get_final_response()
    assert first.status == "completed"
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.namespace == "weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    # The hosted tool was left out of what the model saw and is listed back unchanged.
    assert [t.model_dump(exclude_none=True) for t in first.tools if t.type == "web_search"] == [WEB_SEARCH]
    with pytest.raises(openai.NotFoundError):  # store: false
        await client.responses.retrieve(first.id)

    # Turn two: the whole history again, with the call, a reasoning item (as Codex keeps them)
    # and the call's output.
    history += [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-opaque"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"},
    ]
    counted = await client.responses.input_tokens.count(
        model=TOOL_MODEL, instructions="You are Codex, a coding agent.", input=history,
        tools=[SHELL, APPLY_PATCH, NAMESPACE, WEB_SEARCH],
    )  # fmt: skip
    assert counted.object == "response.input_tokens"
    second = await client.responses.create(**codex_request(history))
    assert second.status in ("completed", "incomplete")
    assert second.usage.input_tokens == counted.input_tokens > first.usage.input_tokens


async def test_custom_tools_come_back_as_custom_tool_calls(sdk):
    client = await sdk()
    custom = {"type": "custom", "name": "get_weather", "description": "Free-form weather question"}
    params = dict(model=TOOL_MODEL, temperature=0, max_output_tokens=20, tools=[custom])
    reply = await client.responses.create(**params, input="Weather in Paris?")
    (call,) = [item for item in reply.output if item.type == "custom_tool_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and "Paris" in call.input
    events = [e.type async for e in await client.responses.create(**params, input="Weather?", stream=True)]
    assert "response.custom_tool_call_input.done" in events
    answer = await client.responses.create(
        **params,
        input=[
            {"type": "message", "role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "18 degrees"},
        ],
    )
    assert answer.status in ("completed", "incomplete")


async def test_hosted_tools_cannot_be_forced(sdk):
    client = await sdk()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model=TOOL_MODEL, input="Search", tools=[WEB_SEARCH, SHELL], tool_choice={"type": "web_search"}
        )
    assert caught.value.body["param"] == "tool_choice"
    forced = await client.responses.create(
        model=TOOL_MODEL, input="Weather?", tools=[NAMESPACE, WEB_SEARCH], temperature=0, max_output_tokens=20,
        tool_choice={"type": "function", "name": "get_weather"},
    )  # fmt: skip
    (call,) = [item for item in forced.output if item.type == "function_call"]
    assert call.namespace == "weather"


async def test_a_custom_tools_regex_grammar_is_enforced(sdk):
    """Random weights, a forced call: the input still matches the tool's regex (llguidance)."""
    client = await sdk()
    ticket = {
        "type": "custom",
        "name": "open_ticket",
        "description": "Opens a ticket by its code",
        "format": {"type": "grammar", "syntax": "regex", "definition": "[a-z]{3}-[0-9]{2}"},
    }
    for seed in (1, 2, 3):
        reply = await client.responses.create(
            model="local/tiny-demo", input="Open the ticket", tools=[ticket], max_output_tokens=40,
            tool_choice={"type": "custom", "name": "open_ticket"}, temperature=1.0, extra_body={"seed": seed},
        )  # fmt: skip
        (call,) = [item for item in reply.output if item.type == "custom_tool_call"]
        assert call.name == "open_ticket" and re.fullmatch("[a-z]{3}-[0-9]{2}", call.input), call.input
