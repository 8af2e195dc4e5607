"""Model profiles and aliases through the real server, the unmodified SDKs and real runners."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from conftest import server_config
from models import build_models, eos_id

SYSTEM = "You are a terse coding assistant."


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = build_models(tmp_path_factory.mktemp("profile-models"), ["tiny-demo", "tiny-other", "tiny-untooled"])
    # The same chat template in other words: mlx-lm no longer infers its tool-call format from it.
    config_path = folder / "tiny-untooled" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = config["chat_template"].replace("tool_call.name", "tool_call['name']")
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture
def mlx_config(models_dir):
    return server_config(
        models_dir,
        default_keep_alive=-1,
        profiles={
            "coder": {
                "models": ["local/not-here", "local/tiny-demo"],
                "system": SYSTEM,
                "max_tokens": 6,
                "temperature": 0,
            },
        },
        aliases={"claude-*": "coder", "gpt-5": "local/tiny-other"},
    )


@pytest.fixture
def urls(jp_http_port, jp_base_url):
    return f"http://localhost:{jp_http_port}{jp_base_url}mlx"


async def test_a_profile_is_a_model_clients_ask_for_with_its_defaults(api, urls, models_dir):
    token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
    client = openai.AsyncOpenAI(base_url=urls + "/v1", api_key=token, max_retries=0)
    listed = {m.id: m for m in (await client.models.list()).data}
    assert listed["coder"].owned_by == "profile"

    no_eos = {str(eos_id(models_dir / "tiny-demo")): -100}
    reply = await client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], logit_bias=no_eos
    )
    assert reply.model == "local/tiny-demo"  # the first of its models that is here
    assert reply.usage.completion_tokens == 6  # the profile's max_tokens
    own = await client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], logit_bias=no_eos, max_tokens=3
    )
    assert own.usage.completion_tokens == 3  # the request's own value wins
    # The profile's system prompt is in the prompt: more prompt tokens than the bare model's.
    bare = await client.chat.completions.create(
        model="local/tiny-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert reply.usage.prompt_tokens > bare.usage.prompt_tokens

    # Claude Code's own model names, through a glob alias, on the Messages API.
    claude = anthropic.AsyncAnthropic(base_url=urls, api_key=token, max_retries=0)
    message = await claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.model == "local/tiny-demo"
    counted = await claude.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.input_tokens > 0  # counted for the profile's model, with its system prompt
    direct = await client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert direct.model == "local/tiny-other"  # an alias straight to a model

    records = (await api("GET", "mlx/api/audit", params={"limit": "50"})).body["records"]
    asked = {(r["requested_model"], r["model"]) for r in records if r["endpoint"]}
    assert {
        ("coder", "local/tiny-demo"),
        ("claude-sonnet-4-5", "local/tiny-demo"),
        ("gpt-5", "local/tiny-other"),
    } <= asked
    assert (None, "local/tiny-demo") in asked  # a plain model id names no profile

    with pytest.raises(openai.BadRequestError):  # a name that is neither stays a 400
        await client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])


async def test_admins_write_profiles_users_read_them(api, make_user):
    _, bob = await make_user("bob")
    assert (await api("PUT", "mlx/api/profiles/writer", auth=bob, body={"model": "local/tiny-demo"})).code == 403
    created = await api("PUT", "mlx/api/profiles/writer", body={"model": "local/tiny-other", "temperature": 0.7})
    assert created.code == 200 and created.body["models"] == ["local/tiny-other"]
    listed = (await api("GET", "mlx/api/profiles", auth=bob)).body
    assert {p["name"] for p in listed["profiles"]} == {"coder", "writer"} and listed["aliases"]["gpt-5"]
    assert (await api("GET", "mlx/api/profiles/WRITER", auth=bob)).body["temperature"] == 0.7
    for bad in ({"model": "not an id"}, {"models": []}, {"model": "local/x", "temperature": "hot"}, {"colour": 1}):
        reply = await api("PUT", "mlx/api/profiles/bad", body=bad)
        assert reply.code == 400 and reply.body["reason"] == "invalid_profile", bad
    assert (await api("DELETE", "mlx/api/profiles/writer", auth=bob)).code == 403
    assert (await api("DELETE", "mlx/api/profiles/writer")).code == 200
    assert (await api("DELETE", "mlx/api/profiles/coder")).code == 404  # configured ones are changed in the config


async def test_a_profile_sets_what_no_body_can_its_context_and_tool_parser(api, urls, models_dir):
    """`context_length` below the model's: longer prompts are refused with the profile's limit,
    answers are clamped to it. `tool_parser`: a model whose template implies no tool-call format
    gets mlx-lm's json_tools through the profile, so a forced tool call works (and is parsed)."""
    for bad in ({"model": "local/tiny-demo", "tool_parser": "made_up"}, {"model": "local/tiny-demo", "context_length": 1},
                {"model": "local/tiny-demo", "context_length": 2.5}):  # fmt: skip
        reply = await api("PUT", "mlx/api/profiles/bad", body=bad)
        assert reply.code == 400 and reply.body["reason"] == "invalid_profile", (bad, reply.body)
    assert (
        await api("PUT", "mlx/api/profiles/short", body={"model": "local/tiny-demo", "context_length": 48})
    ).code == 200
    tooled = {"model": "local/tiny-untooled", "tool_parser": "json_tools", "temperature": 0}
    assert (await api("PUT", "mlx/api/profiles/tooled", body=tooled)).code == 200
    token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
    client = openai.AsyncOpenAI(base_url=urls + "/v1", api_key=token, max_retries=0)
    no_eos = {str(eos_id(models_dir / "tiny-demo")): -100}

    long = [{"role": "user", "content": "tell me everything about notebooks " * 8}]
    assert (await client.chat.completions.create(model="local/tiny-demo", messages=long, max_tokens=1)).usage
    with pytest.raises(openai.BadRequestError) as refused:  # the model itself would take it
        await client.chat.completions.create(model="short", messages=long, max_tokens=1)
    assert refused.value.code == "context_length_exceeded" and "context length is 48" in str(refused.value)
    clamped = await client.chat.completions.create(
        model="short", messages=[{"role": "user", "content": "hi"}], max_tokens=200, logit_bias=no_eos
    )
    assert clamped.choices[0].finish_reason == "length"
    assert clamped.usage.prompt_tokens + clamped.usage.completion_tokens == 48

    tools = [{"type": "function", "function": {"name": "run_cell", "parameters": {"type": "object"}}}]
    ask = {
        "messages": [{"role": "user", "content": "run it"}],
        "tools": tools,
        "tool_choice": "required",
        "max_tokens": 40,
    }
    with pytest.raises(openai.BadRequestError) as untooled:
        await client.chat.completions.create(model="local/tiny-untooled", **ask)
    assert untooled.value.code == "unsupported_tool_choice"
    called = await client.chat.completions.create(model="tooled", **ask)
    assert called.choices[0].finish_reason == "tool_calls", called
    assert [c.function.name for c in called.choices[0].message.tool_calls] == ["run_cell"]
