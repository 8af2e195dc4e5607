"""The model pool: shared loads, eviction, pinning, keep-alive, failed loads, no orphans."""

from __future__ import annotations

import asyncio
import json
import shutil

import psutil
import pytest
from conftest import server_config
from models import build_models
from waiting import wait_until_async


@pytest.fixture(scope="session")
def pool_models(tmp_path_factory):
    folder = build_models(tmp_path_factory.mktemp("pool-models"), ["a", "b", "c"])
    broken = folder / "corrupt"
    shutil.copytree(folder / "a", broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    remote_code = folder / "remote-code"
    shutil.copytree(folder / "a", remote_code)
    config = json.loads((remote_code / "config.json").read_text())
    (remote_code / "config.json").write_text(json.dumps({**config, "model_file": "evil.py"}))
    tokenizer_code = folder / "tokenizer-code"
    shutil.copytree(folder / "a", tokenizer_code)
    tokenizer_config = json.loads((tokenizer_code / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (tokenizer_code / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    no_tokenizer = folder / "no-tokenizer"
    shutil.copytree(folder / "a", no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "tokenizer_config.json").unlink()
    return folder


@pytest.fixture
def mlx_config(pool_models):
    return server_config(pool_models, max_loaded_models=2, default_keep_alive=-1)


async def _loaded(api) -> list[str]:
    return [m["model"] for m in (await api("GET", "mlx/api/pool")).body["models"]]


def _empty(collection) -> bool:
    return not collection


async def test_two_loads_share_one_runner_start(api, mlx_app):
    first, second = await asyncio.gather(
        api("POST", "mlx/api/pool/load", body={"model": "local/a"}),
        api("POST", "mlx/api/pool/load", body={"model": "local/a"}),
    )
    assert first.code == second.code == 200
    assert first.body["pid"] == second.body["pid"]
    assert psutil.Process(first.body["pid"]).is_running()
    status = (await api("GET", "mlx/api/pool")).body
    assert status["limits"]["max_loaded_models"] == 2 and status["memory_used_bytes"] > 0
    assert set(status["models"][0]) >= {
        "model",
        "status",
        "pinned",
        "keep_alive",
        "expires_at",
        "memory_bytes",
        "pid",
        "loaded_at",
        "last_used",
        "requests",
    }


async def test_lru_eviction_spares_pinned_models(api):
    pids = {}
    for name in ("a", "b"):
        pids[name] = (await api("POST", "mlx/api/pool/load", body={"model": f"local/{name}"})).body["pid"]
    await api("POST", "mlx/api/pool/load", body={"model": "local/a"})  # a is now the most recently used
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/c"})).code == 200
    assert sorted(await _loaded(api)) == ["local/a", "local/c"], "b was least recently used"
    assert not psutil.pid_exists(pids["b"]) or psutil.Process(pids["b"]).status() == psutil.STATUS_ZOMBIE

    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/c", "pin": True})).body["pinned"] is True
    await api("POST", "mlx/api/pool/load", body={"model": "local/c"})  # c most recent, but pinned: a goes
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/b"})).code == 200
    assert sorted(await _loaded(api)) == ["local/b", "local/c"]

    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/b", "pin": True})).code == 200
    full = await api("POST", "mlx/api/pool/load", body={"model": "local/a"})
    assert full.code == 503 and full.body["reason"] == "pool_busy" and full.headers["Retry-After"]
    assert sorted(await _loaded(api)) == ["local/b", "local/c"]

    assert (await api("POST", "mlx/api/pool/unload", body={"model": "local/b"})).code == 200
    assert (await api("POST", "mlx/api/pool/unload", body={"model": "local/b"})).code == 404
    audit = await wait_until_async(  # pool events are written in the background
        lambda: api("GET", "mlx/api/audit", params={"limit": "100"}),
        "the unload in the audit trail",
        done=lambda reply: "model.unload" in [r["action"] for r in reply.body["records"]],
    )
    actions = [r["action"] for r in audit.body["records"]]
    assert "model.evict" in actions and "model.load" in actions


async def test_keep_alive_expiry_unloads(api):
    reply = await api("POST", "mlx/api/pool/load", body={"model": "local/a", "keep_alive": 1})
    assert reply.body["keep_alive"] == 1 and reply.body["expires_at"] is not None
    await wait_until_async(lambda: _loaded(api), "keep_alive to unload it", timeout=15, interval=0.2, done=_empty)
    assert (
        not psutil.pid_exists(reply.body["pid"]) or psutil.Process(reply.body["pid"]).status() == psutil.STATUS_ZOMBIE
    )

    # keep_alive 0 on a request: unloaded as soon as that request is done.
    body = {"model": "local/a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "keep_alive": 0}
    assert (await api("POST", "mlx/v1/chat/completions", body=body)).code == 200
    await wait_until_async(lambda: _loaded(api), "keep_alive 0 to unload it", timeout=15, done=_empty)


@pytest.mark.parametrize(
    "name, words",
    [
        ("corrupt", "could not be loaded"),
        ("remote-code", "ships its own Python code"),
        ("tokenizer-code", "ships its own Python code"),
        ("no-tokenizer", "no tokenizer"),
    ],
)
async def test_failed_loads_say_why_and_leave_no_runner(api, name, words):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    reply = await api("POST", "mlx/api/pool/load", body={"model": f"local/{name}"})
    assert reply.code == 422, reply.body
    assert words in reply.body["message"]
    assert await _loaded(api) == []
    await wait_until_async(
        lambda: (
            {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE} - before
        ),
        "no runner process left behind",
        done=_empty,
    )


async def test_bad_load_requests(api):
    for body, code in (
        ({"model": "../../etc"}, 400), ({"model": "local/missing"}, 404), ({}, 400), ({"model": "local/a", "pin": "yes"}, 400),
        ({"model": "local/a", "keep_alive": "5m"}, 400), ({"model": "a/b/c"}, 400),
        ({"model": "local/a", "keep_alive": 1e300}, 400),
    ):  # fmt: skip
        reply = await api("POST", "mlx/api/pool/load", body=body)
        assert reply.code == code, (body, reply.body)
    assert (await api("POST", "mlx/api/pool/unload", body={"model": 5})).code == 400


async def test_no_runner_survives_the_extension_stopping(api, mlx_app):
    pids = [(await api("POST", "mlx/api/pool/load", body={"model": f"local/{n}"})).body["pid"] for n in ("a", "b")]
    await mlx_app.stop_extension()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_busy_model_is_unloaded_only_with_force(api, pool_models):
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/a"})).code == 200
    eos = json.loads((pool_models / "a" / "config.json").read_text())["eos_token_id"]
    body = {
        "model": "local/a",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 3000,
        "logit_bias": {str(eos): -100},
    }
    chat = asyncio.ensure_future(api("POST", "mlx/v1/chat/completions", body=body))
    await wait_until_async(
        lambda: api("GET", "mlx/api/pool"),
        "the chat in flight",
        timeout=10,
        interval=0.05,
        done=lambda pool: pool.body["models"][0]["in_flight"],
    )
    busy = await api("POST", "mlx/api/pool/unload", body={"model": "local/a"})
    assert busy.code == 409 and busy.body["reason"] == "model_busy"
    assert (await api("POST", "mlx/api/pool/unload", body={"model": "local/a", "force": True})).code == 200
    assert (await chat).code == 500  # the request it was answering ends with an error
    assert await _loaded(api) == []


class TestOneModelAtATime:
    @pytest.fixture
    def mlx_config(self, pool_models):
        return server_config(pool_models, max_loaded_models=1)

    async def test_a_model_waited_for_is_not_evicted_before_its_request_runs(self, api):
        """Two requests for two models at once: the second load must not evict the first model
        between its load and its use (that request would die); it is told to wait instead."""

        async def chat(name):
            body = {"model": f"local/{name}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            return await api("POST", "mlx/v1/chat/completions", body=body)

        for _ in range(3):
            replies = await asyncio.gather(chat("a"), chat("b"))
            assert sorted(r.code for r in replies) in ([200, 200], [200, 503]), [r.body for r in replies]
