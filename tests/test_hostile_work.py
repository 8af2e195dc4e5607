"""Hostile input at scale, the work half (SPEC "Hostile input at scale"): what a request may
ask is bounded before the server pays for it (stop strings, tool names and count, message
count, schema sizes, an obviously too long prompt), and the work before admission (parsing)
happens inside the sender's own concurrency limit, off the event loop. Real server, real
runner, the unmodified SDKs."""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
import pytest
from conftest import server_config
from models import build_models

MODEL = "local/tiny-demo"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("hostile-work-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1, max_requests_per_user=2)


@pytest.fixture
def clients(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        base = f"http://localhost:{jp_http_port}{jp_base_url}mlx"
        return (
            openai.AsyncOpenAI(base_url=base + "/v1", api_key=token, max_retries=0),
            anthropic.AsyncAnthropic(base_url=base, api_key=token, max_retries=0),
        )

    return make


def _user(text="hi"):
    return [{"role": "user", "content": text}]


async def test_what_a_request_may_ask_is_bounded(clients):
    sdk, claude = await clients()
    cases = [
        ({"stop": ["x" * 257]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!", "parameters": {"type": "object"}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(129)]}, "tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": {
                "type": "object", "description": "x" * 300_000}}}},
            "response_format",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "big", "parameters": {
                "type": "object", "description": "x" * 300_000}}}]},
            "tools",
        ),
    ]  # fmt: skip
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(model=MODEL, messages=_user(), max_tokens=1, **extra)
        assert refused.value.body["param"] == param, (extra.keys(), refused.value.body)

    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model=MODEL, messages=_user() * 10_001, max_tokens=1)
    assert (refused.value.body["param"], refused.value.code) == ("messages", "too_many_messages")

    with pytest.raises(anthropic.BadRequestError) as refused:  # the same bound, in Anthropic's envelope
        await claude.messages.create(model=MODEL, max_tokens=1, messages=_user(), stop_sequences=["y" * 300])
    assert refused.value.body["error"]["type"] == "invalid_request_error"


async def test_an_obviously_too_long_prompt_is_refused_before_it_is_templated(clients, api):
    sdk, claude = await clients()
    text = "word " * (2048 * 64 // 5 + 10)  # more characters than 2,048 tokens could ever hold
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(model=MODEL, max_tokens=1, messages=_user(text))
    message = refused.value.body["error"]["message"]
    assert message.startswith("prompt is too long: ") and "counted from its" in message
    records = (await api("GET", "mlx/api/audit", params={"model": MODEL})).body["records"]
    assert records[0]["error_type"] == "context_length_exceeded" and records[0]["prompt_tokens"] == 0


async def test_a_flood_of_bad_bodies_holds_only_its_senders_places(api, make_user):
    """Twelve 2.5 MB bodies of 120,000 tiny messages at once from one user (limit 2): each is
    refused — 400 on its message count, or 429 without being read — none is a server error, and
    a bystander's requests are served meanwhile."""
    _, bob = await make_user("bob")
    _, carol = await make_user("carol")
    body = json.dumps({"model": MODEL, "messages": _user("x") * 120_000, "max_tokens": 1})

    async def flood():
        headers = {"Content-Type": "application/json"}
        return (await api("POST", "mlx/v1/chat/completions", auth=bob, raw_body=body, headers=headers)).code

    async def bystander():
        codes = []
        for _ in range(20):
            reply = await api("GET", "mlx/api/status", auth=carol)
            codes.append(reply.code)
            await asyncio.sleep(0.02)
        return codes

    assert len(body) > 2_000_000
    *flooded, seen = await asyncio.gather(*(flood() for _ in range(12)), bystander())
    assert set(flooded) <= {400, 429} and 400 in flooded, flooded
    assert seen == [200] * 20
    refused = (await api("GET", "mlx/api/audit", params={"user": "bob", "limit": "100"})).body["records"]
    assert sum(r["error_type"] == "too_many_requests" for r in refused) == flooded.count(429)


async def test_a_client_error_is_logged_once(api, caplog):
    """One warning line per refused request (the access log's), not a second one with its message."""
    caplog.clear()
    reply = await api("POST", "mlx/v1/chat/completions", body={"model": MODEL, "messages": [], "max_tokens": 1})
    assert reply.code == 400
    lines = [r for r in caplog.records if r.levelname == "WARNING" and "chat/completions" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
