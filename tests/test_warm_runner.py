"""The warm spare runner: one runner process with MLX imported, waiting for a model; a load
hands it the model (same pid) and a new spare follows; none with `warm_runner = False`; no
process outlives the extension."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest
from conftest import server_config
from models import build_models
from waiting import wait_until_async


@pytest.fixture(scope="session")
def warm_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("warm-models"), ["a", "b"])


@pytest.fixture
def mlx_config(warm_models):
    return server_config(warm_models, max_loaded_models=2, default_keep_alive=-1, warm_runner=True)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _spare(api, ready: bool = True, not_pid: int | None = None, timeout: float = 60) -> dict:
    pool = await wait_until_async(
        lambda: api("GET", "mlx/api/pool"),
        "a spare runner" + (" ready" if ready else "") + (f" other than {not_pid}" if not_pid else ""),
        timeout,
        done=lambda pool: (
            (spare := pool.body["spare"]) is not None and spare["pid"] != not_pid and (spare["ready"] or not ready)
        ),
    )
    return pool.body["spare"]


async def test_a_load_takes_the_spare_and_a_new_spare_follows(api, mlx_app):
    spare = await _spare(api)
    assert psutil.Process(spare["pid"]).is_running()
    assert spare["pid"] in {p.pid for p in psutil.Process().children(recursive=True)}
    status = (await api("GET", "mlx/api/pool")).body
    assert status["models"] == [] and status["memory_used_bytes"] == 0, "the spare is not a loaded model"

    loaded = await api("POST", "mlx/api/pool/load", body={"model": "local/a"})
    assert loaded.code == 200, loaded.body
    assert loaded.body["pid"] == spare["pid"], "the load used the spare"
    body = {"model": "local/a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert (await api("POST", "mlx/v1/chat/completions", body=body)).code == 200

    second = await _spare(api, not_pid=spare["pid"])
    assert second["pid"] != loaded.body["pid"]
    other = await api("POST", "mlx/api/pool/load", body={"model": "local/b"})
    assert other.code == 200 and other.body["pid"] == second["pid"]
    third = await _spare(api, ready=False, not_pid=second["pid"])

    pids = [loaded.body["pid"], other.body["pid"], third["pid"]]
    await mlx_app.stop_extension()
    await wait_until_async(lambda: all(_gone(pid) for pid in pids), "the runners and the spare to exit", timeout=10)


async def test_a_failed_load_on_the_spare_says_why_and_a_new_spare_follows(api, warm_models):
    spare = await _spare(api)
    config_path = warm_models / "b" / "config.json"
    config = config_path.read_text()
    config_path.unlink()  # b is no model now: refused before any runner is involved
    try:
        reply = await api("POST", "mlx/api/pool/load", body={"model": "local/b"})
    finally:
        config_path.write_text(config)
    assert reply.code == 404, reply.body
    assert (await _spare(api))["pid"] == spare["pid"], "a load refused before spawning leaves the spare"
    # A model the runner itself cannot load: the spare that took it exits, a new one follows.
    config_path.write_text(json.dumps({**json.loads(config), "model_type": "no_such_architecture"}))
    try:
        reply = await api("POST", "mlx/api/pool/load", body={"model": "local/b"})
    finally:
        config_path.write_text(config)
    assert reply.code == 422 and "could not be loaded" in reply.body["message"], reply.body
    await wait_until_async(lambda: _gone(spare["pid"]), "the spare that failed the load to exit", timeout=10)
    await _spare(api, not_pid=spare["pid"])
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/b"})).code == 200


class TestNoWarmRunner:
    @pytest.fixture
    def mlx_config(self, warm_models):
        return server_config(warm_models, warm_runner=False, default_keep_alive=-1)

    async def test_no_spare_and_loads_spawn_as_before(self, api, mlx_app):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        await asyncio.sleep(0.5)
        assert (await api("GET", "mlx/api/pool")).body["spare"] is None
        loaded = await api("POST", "mlx/api/pool/load", body={"model": "local/a"})
        assert loaded.code == 200 and loaded.body["pid"] not in before
        await asyncio.sleep(0.5)
        status = (await api("GET", "mlx/api/pool")).body
        assert status["spare"] is None
        children = {p.pid for p in psutil.Process().children(recursive=True) if not _gone(p.pid)} - before
        assert children == {loaded.body["pid"]}
        await mlx_app.stop_extension()
        assert _gone(loaded.body["pid"])
