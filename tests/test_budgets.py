"""Token budgets and usage through the real server, real runners and the unmodified SDKs.

Time is the budgets' clock, which the test moves; nothing sleeps to reach a new window."""

from __future__ import annotations

import datetime as dt

import anthropic
import openai
import pytest
from conftest import OWNER, server_config
from models import build_models, eos_id

MODEL = "local/tiny-demo"
DAY = 86400


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("budget-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(
        models_dir,
        default_keep_alive=-1,
        budgets={"default": {"tokens_per_day": 1_000_000}, "users": {"bob": {"tokens_per_day": 60}}},
    )


@pytest.fixture
def clock(mlx_app):
    """The budgets' clock, fixed at noon UTC of a day to come; `clock.now += DAY` moves it."""

    class Clock:
        now = dt.datetime(2030, 6, 15, 12, tzinfo=dt.UTC).timestamp()

        def __call__(self):
            return self.now

    fake = Clock()
    mlx_app.budget_service.clock = fake
    return fake


@pytest.fixture
def sdk(make_user, jp_http_port, jp_base_url):
    async def make(name: str):
        _, token = await make_user(name)
        return token, openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


async def _chat(client, models_dir, tokens=20):
    return await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=tokens,
        temperature=0,
        logit_bias={str(eos_id(models_dir / "tiny-demo")): -100},
    )


async def test_a_spent_budget_refuses_until_its_window_renews(sdk, api, clock, models_dir, jp_http_port, jp_base_url):
    token, bob = await sdk("bob")
    first = await _chat(bob, models_dir)
    spent = first.usage.prompt_tokens + first.usage.completion_tokens
    while spent < 60:  # bob's own budget: 60 tokens a day; a request that crosses it finishes
        reply = await _chat(bob, models_dir)
        assert reply.usage.completion_tokens == 20
        spent += reply.usage.prompt_tokens + reply.usage.completion_tokens

    with pytest.raises(openai.RateLimitError) as refused:
        await _chat(bob, models_dir)
    assert refused.value.code == "budget_exceeded"
    assert int(refused.value.response.headers["Retry-After"]) == 12 * 3600  # noon → midnight UTC

    # The Anthropic envelope says the same, and the budget covers every protocol.
    claude = anthropic.AsyncAnthropic(
        base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx", api_key=token, max_retries=0
    )
    with pytest.raises(anthropic.RateLimitError) as refused:
        await claude.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    assert "budget" in refused.value.body["error"]["message"]

    own = (await api("GET", "mlx/api/budgets", auth=token)).body
    day = own["windows"]["tokens_per_day"]
    assert (day["limit"], day["used"], day["remaining"]) == (60, spent, 0)
    assert own["windows"]["tokens_per_month"]["limit"] is None  # nothing configured: unlimited

    # Others are not held back by bob's budget.
    _, carol = await sdk("carol")
    assert (await _chat(carol, models_dir)).usage.completion_tokens == 20

    clock.now += DAY  # the next day: a fresh budget
    assert (await _chat(bob, models_dir)).usage.completion_tokens == 20


async def test_admins_set_budgets_users_only_read_their_own(sdk, api, clock, models_dir):
    token, bob = await sdk("bob")
    reply = await api("PUT", "mlx/api/budgets", auth=token, body={"default": {"tokens_per_minute": 1}})
    assert reply.code == 403

    reply = await api("PUT", "mlx/api/budgets", body={"users": {"bob": {"tokens_per_minute": 1}}})
    assert reply.code == 200 and reply.body["budgets"]["users"]["bob"] == {"tokens_per_minute": 1}
    await _chat(bob, models_dir)  # admitted: nothing spent yet this minute
    with pytest.raises(openai.RateLimitError) as refused:
        await _chat(bob, models_dir)
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60

    clock.now += 60
    await _chat(bob, models_dir)

    assert (await api("PUT", "mlx/api/budgets", body={"users": {"bob": None}})).code == 200  # back to config
    table = (await api("GET", "mlx/api/budgets")).body
    assert table["budgets"]["users"]["bob"] == {"tokens_per_day": 60}
    assert {u["user"] for u in table["users"]} >= {OWNER, "bob"}

    for bad in ({"users": {"bob": {"tokens_per_day": -1}}}, {"default": {"tokens_per_week": 5}}, {"nobody": {}}):
        reply = await api("PUT", "mlx/api/budgets", body=bad)
        assert reply.code == 400 and reply.body["reason"] == "invalid_budget", bad


async def test_usage_sums_equal_the_audit(sdk, api, clock, models_dir):
    _, bob = await sdk("bob")
    _, carol = await sdk("carol")
    await _chat(bob, models_dir, tokens=5)
    await _chat(carol, models_dir, tokens=7)
    await _chat(carol, models_dir, tokens=7)

    by_user = {row["key"]: row for row in (await api("GET", "mlx/api/usage", params={"group_by": "user"})).body["rows"]}
    records = (await api("GET", "mlx/api/audit", params={"limit": "1000"})).body["records"]
    for user in ("bob", "carol"):
        mine = [r for r in records if r["user"] == user and r["endpoint"]]
        assert by_user[user]["requests"] == len(mine)
        assert by_user[user]["prompt_tokens"] == sum(r["prompt_tokens"] for r in mine)
        assert by_user[user]["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
    assert by_user["carol"]["completion_tokens"] == 14

    days = (await api("GET", "mlx/api/usage")).body
    assert days["group_by"] == "day" and sum(r["requests"] for r in days["rows"]) == sum(
        r["requests"] for r in by_user.values()
    )
    assert (await api("GET", "mlx/api/usage", params={"group_by": "week"})).code == 400


async def test_users_see_only_their_own_usage(sdk, api, make_user, clock, models_dir):
    _, bob = await sdk("bob")
    await _chat(bob, models_dir, tokens=3)
    _, carol_token = await make_user("carol")
    rows = (await api("GET", "mlx/api/usage", auth=carol_token, params={"group_by": "user"})).body["rows"]
    assert rows == []
    assert (await api("GET", "mlx/api/usage", auth=carol_token, params={"user": "bob"})).code == 403
