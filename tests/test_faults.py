"""Fault injection through a real server process: runners killed, stopped or orphaned while
streams decode. Every stream ends with a final event, and the next request is served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import httpx
import psutil
import pytest
from models import build_models, eos_id
from servers import jupyter_server

MODEL = "local/tiny-demo"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("fault-models"), ["tiny-demo"])


@pytest.fixture
def server(tmp_path, models_dir):
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1",
            "--MLXManager.runner_stall_seconds=3")  # fmt: skip
    with jupyter_server(tmp_path, *args) as running:
        yield running


def _body(models_dir, content: str, max_tokens: int = 4000) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": {str(eos_id(models_dir / "tiny-demo")): -100},
        "stream": True,
    }


class Stream:
    """One streaming chat: the events it got and how it ended ("done", "error: <code>", "cut")."""

    def __init__(self, http: httpx.AsyncClient, body: dict):
        self.first = asyncio.Event()
        self.ending: str | None = None
        self.ended_at: float | None = None
        self.task = asyncio.ensure_future(self._run(http, body))

    async def _run(self, http, body):
        try:
            async with http.stream("POST", "mlx/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200, await reply.aread()
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        self.ending = "done"
                        break
                    data = json.loads(line[6:])
                    if "error" in data:
                        self.ending = f"error: {data['error'].get('code')}"
                        break
                    self.first.set()
        except httpx.HTTPError:
            pass
        self.ending = self.ending or "cut"
        self.ended_at = time.monotonic()
        self.first.set()


async def _pool(http) -> list[dict]:
    return (await http.get("mlx/api/pool")).json()["models"]


async def _streams(http, models_dir, n: int) -> list[Stream]:
    streams = [Stream(http, _body(models_dir, f"stream {i}")) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in streams)), 120)
    assert all(s.ending is None for s in streams), [s.ending for s in streams]
    return streams


def _client(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60)


async def test_sigkill_of_a_runner_ends_all_eight_streams_with_an_error_and_the_next_request_reloads(
    server, models_dir
):
    async with _client(server) as http:
        streams = await _streams(http, models_dir, 8)
        (model,) = await _pool(http)
        killed_at = time.monotonic()
        os.kill(model["pid"], signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 30)
        assert {s.ending for s in streams} == {"error: runner_crashed"}, [s.ending for s in streams]
        slowest = max(s.ended_at for s in streams) - killed_at
        reply = await http.post("mlx/v1/chat/completions", json={**_body(models_dir, "again", 4), "stream": False})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
        (reloaded,) = await _pool(http)
        assert reloaded["pid"] != model["pid"]
    print(f"slowest stream ended {slowest * 1000:.0f} ms after the SIGKILL")


async def test_a_stopped_runner_is_killed_as_stalled_and_the_next_request_reloads(server, models_dir):
    async with _client(server) as http:
        (stream,) = await _streams(http, models_dir, 1)
        (model,) = await _pool(http)
        os.kill(model["pid"], signal.SIGSTOP)
        try:
            await asyncio.wait_for(stream.task, 30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the watchdog may have killed it just now
                os.kill(model["pid"], signal.SIGCONT)
        assert stream.ending == "error: runner_stalled"
        reply = await http.post("mlx/v1/chat/completions", json={**_body(models_dir, "again", 4), "stream": False})
        assert reply.status_code == 200
        (reloaded,) = await _pool(http)
        assert reloaded["pid"] != model["pid"]
        records = (await http.get("mlx/api/audit", params={"status": "error"})).json()["records"]
        assert any(r["error_type"] == "runner_stalled" for r in records)


async def test_sigterm_of_the_server_ends_every_stream_and_leaves_no_runner(server, models_dir):
    async with _client(server) as http:
        streams = await _streams(http, models_dir, 4)
        (model,) = await _pool(http)
        runner = psutil.Process(model["pid"])
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 60)
        endings = [s.ending for s in streams]
        assert all(e != "cut" for e in endings), f"a stream was cut without a final event: {endings}"
        server.process.wait(30)
        runner.wait(10)
        assert not runner.is_running()
