"""Shared-machine safety of the inference path: hostile input and floods, through the real
server, real runners and the unmodified `openai` SDK, with an admin and an approved user."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import openai
import pytest
from conftest import JWT_SECRET, OWNER
from models import build_models, eos_id
from waiting import wait_until_async

MODEL = "local/tiny-demo"
LONG = 3000  # tokens: a stream that stays busy for the length of a test step


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("limits-models"), ["tiny-demo"])


@pytest.fixture
def limits():
    return {}


@pytest.fixture
def mlx_config(models_dir, limits):
    return {
        "owner_username": OWNER,
        "jwt_secret": JWT_SECRET,
        "model_dirs": [str(models_dir)],
        "default_keep_alive": -1,
        **limits,
    }


@pytest.fixture
def no_eos(models_dir):
    return {str(eos_id(models_dir / "tiny-demo")): -100}


@pytest.fixture
def vocab_size(models_dir):
    return json.loads((models_dir / "tiny-demo" / "config.json").read_text())["vocab_size"]


@pytest.fixture
def base_url(jp_http_port, jp_base_url):
    return f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1"


@pytest.fixture
def admin_sdk(api, base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "admin"})).body["token"]
        return openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0)

    return make


@pytest.fixture
def user_sdk(make_user, base_url):
    async def make(name="bob"):
        _, token = await make_user(name)
        return openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0)

    return make


async def _open_stream(client, no_eos, max_tokens=LONG, content="long"):
    """A streaming chat that has produced its first chunk (so it is decoding)."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        logit_bias=no_eos,
        stream=True,
    )
    iterator = stream.__aiter__()
    await iterator.__anext__()
    return stream, iterator


async def _drain(iterator):
    chunks = [chunk async for chunk in iterator]
    return chunks[-1].choices[0].finish_reason if chunks and chunks[-1].choices else None


async def test_out_of_range_token_ids_are_refused_and_the_runner_keeps_serving(
    admin_sdk, user_sdk, api, no_eos, vocab_size
):
    admin, user = await admin_sdk(), await user_sdk()
    stream, iterator = await _open_stream(admin, no_eos, max_tokens=300)
    pid = (await api("GET", "mlx/api/pool")).body["models"][0]["pid"]
    for prompt in ([2147483647], [vocab_size], [vocab_size - 1, vocab_size + 188], [2**40]):
        with pytest.raises(openai.BadRequestError) as refused:
            await user.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
        assert refused.value.body["param"] == "prompt", prompt
    with pytest.raises(openai.BadRequestError) as refused:
        await user.completions.create(model=MODEL, prompt="hi", max_tokens=4, logit_bias={str(vocab_size): 5})
    assert refused.value.body["param"] == "logit_bias"
    assert await _drain(iterator) == "length", "the admin's stream must finish normally"
    await stream.close()
    pool = (await api("GET", "mlx/api/pool")).body["models"]
    assert [m["pid"] for m in pool] == [pid], "the shared runner must not have restarted"
    reply = await user.completions.create(model=MODEL, prompt=[1, 2, vocab_size - 1], max_tokens=3, logit_bias=no_eos)
    assert reply.usage.completion_tokens == 3


async def test_a_huge_model_field_never_reaches_the_audit_trail(user_sdk, api, mlx_app):
    user = await user_sdk()
    for model in ("x" * 1_000_000, "local/" + "y" * 300, '=HYPERLINK("http://evil")'):
        with pytest.raises(openai.BadRequestError) as refused:
            await user.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["param"] == "model"
    records = (await api("GET", "mlx/api/audit", params={"limit": "500"})).body["records"]
    assert all(len(r["model"] or "") <= 256 for r in records)
    # However a long value reaches the log, every text field is bounded there.
    record = await mlx_app.audit.record("chat.completions", status="error", model="m" * 5000, detail="e" * 5000)
    assert len(record["model"]) <= 256
    stored = await mlx_app.db.read(
        lambda conn: conn.execute("SELECT model, detail FROM audit_log WHERE id = ?", (record["id"],)).fetchone()
    )
    assert len(stored["model"]) <= 256 and len(stored["detail"]) <= 1000


async def test_csv_export_opens_formula_cells_as_text(api, mlx_app):
    for model in ('=HYPERLINK("http://evil","click")', "+1+1", "-2", "@SUM(A1)", "\tx"):
        await mlx_app.audit.record("chat.completions", status="error", model=model)
    reply = await api("GET", "mlx/api/audit/export", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(reply.body)))
    models = [row["model"] for row in rows if row["model"]]
    assert len(models) == 5
    assert all(m.startswith("'") for m in models), models
    assert '\'=HYPERLINK("http://evil","click")' in models


@pytest.mark.parametrize("limits", [{"max_requests_per_user": 8}])
async def test_a_users_ninth_concurrent_request_gets_429_with_retry_after(user_sdk, admin_sdk, no_eos, limits):
    user = await user_sdk()
    streams = await asyncio.gather(*(_open_stream(user, no_eos, content=f"stream {i}") for i in range(8)))
    with pytest.raises(openai.RateLimitError) as refused:
        await user.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one more"}], max_tokens=2
        )
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert refused.value.body["code"] == "too_many_requests"
    # The limit is per user: the admin is still served.
    reply = await (await admin_sdk()).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, logit_bias=no_eos
    )
    assert reply.usage.completion_tokens == 2
    for stream, _ in streams:
        await stream.close()


@pytest.mark.parametrize("limits", [{"max_batch_size": 1, "max_queued_requests": 1, "max_requests_per_user": 0}])
async def test_queue_overflow_gets_503_and_an_abandoned_request_leaves_the_queue(admin_sdk, no_eos, mlx_app, limits):
    client = await admin_sdk()
    stream, iterator = await _open_stream(client, no_eos)
    queued = asyncio.ensure_future(
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "queued"}], max_tokens=2)
    )
    await wait_until_async(lambda: mlx_app.limits.queue_depth(MODEL) == 1, "the request to queue", interval=0.05)
    with pytest.raises(openai.InternalServerError) as refused:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert refused.value.status_code == 503 and refused.value.body["code"] == "server_busy"
    assert int(refused.value.response.headers["Retry-After"]) >= 1

    queued.cancel()  # the client gives up: its request must leave the queue
    with pytest.raises(asyncio.CancelledError):
        await queued
    await wait_until_async(
        lambda: mlx_app.limits.queue_depth(MODEL) == 0, "the abandoned request to leave the queue", interval=0.05
    )
    # The freed queue place is usable, and it is served once the running stream ends.
    waiting = asyncio.ensure_future(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "next"}], max_tokens=3, logit_bias=no_eos
        )
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await stream.close()
    reply = await asyncio.wait_for(waiting, 60)
    assert reply.usage.completion_tokens == 3


async def test_unknown_routes_answer_json_404_in_the_right_envelope(api):
    reply = await api("POST", "mlx/v1/nothing/here", body={"model": MODEL})
    assert reply.code == 404 and reply.body["error"]["type"] == "invalid_request_error"
    reply = await api("GET", "mlx/api/nothing")
    assert reply.code == 404 and reply.body["reason"] == "unknown_route"
    reply = await api("GET", "mlx/v1/nothing", auth=None)
    assert reply.code == 401 and "error" in reply.body


@pytest.fixture
def under_a_hub(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "a-hub-token-for-this-server")


async def test_registration_is_off_by_default_under_jupyterhub(under_a_hub, api, mlx_app):
    assert mlx_app.allow_registration is False
    reply = await api(
        "POST", "mlx/api/auth/register", auth=None, body={"username": "eve", "password": "long enough pw"}
    )
    assert reply.code == 403 and reply.body["reason"] == "registration_disabled"
