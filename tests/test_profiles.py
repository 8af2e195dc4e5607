"""Model profiles and aliases through the real server, the unmodified SDKs and real runners."""

from __future__ import annotations

import anthropic
import openai
import pytest
from conftest import server_config
from models import build_models, eos_id

SYSTEM = "You are a terse coding assistant."


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("profile-models"), ["tiny-demo", "tiny-other"])


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
