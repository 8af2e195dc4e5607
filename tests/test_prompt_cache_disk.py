"""The prompt cache on disk (`prompt_cache_disk_gb`, `prompt_cache_dir`, `prompt_cache_min_tokens`).

Through real servers and runners: a long prompt's KV prefix is written to disk in the
background and reused (reported as cached tokens, with the same greedy output) after the model
is unloaded, after its runner is killed and after the server restarts; a corrupted or truncated
file, or one whose data changed under an intact header, is ignored (the prompt is computed again,
correctly); the folder stays within its bound. A runner alone: a slow read from disk holds up
only the request it is for.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from models import build_models, eos_id
from servers import jupyter_server
from test_engine import Runner
from waiting import wait_until

NAME = "tiny-demo"
MODEL = f"local/{NAME}"
MIN_TOKENS = 256


def prompt(seed: int, length: int = 1200) -> list[int]:
    return [5 + (i * 7919 + seed * 104729) % 500 for i in range(length)]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("disk-cache-models"), [NAME])


def server_args(models_dir: Path, disk_gb: float = 0.5) -> tuple[str, ...]:
    return (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1",
            f"--MLXManager.prompt_cache_disk_gb={disk_gb}", f"--MLXManager.prompt_cache_min_tokens={MIN_TOKENS}")  # fmt: skip


class Client:
    def __init__(self, server, eos: int):
        self.http = httpx.Client(base_url=server.url, headers=server.headers, timeout=120)
        self.folder = server.data_dir / "prompt-cache"
        self.no_eos = {str(eos): -100}

    def complete(self, tokens: list[int]) -> tuple[str, int]:
        """(greedy text, cached prompt tokens) of a completion of `tokens`."""
        body = {"model": MODEL, "prompt": tokens, "max_tokens": 8, "temperature": 0, "logit_bias": self.no_eos}
        reply = self.http.post("mlx/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert usage["prompt_tokens"] == len(tokens), usage
        return reply.json()["choices"][0]["text"], (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)

    def files(self) -> set[Path]:
        """The finished cache files (not the writer's hidden temporary file, renamed when complete)."""
        if not self.folder.is_dir():
            return set()
        return {path for path in self.folder.glob("*.safetensors") if not path.name.startswith(".")}

    def new_file(self, before: set[Path]) -> Path:
        """Wait for the writer thread's next file (it writes off the request's path)."""
        (path,) = wait_until(lambda: self.files() - before, "a new prompt-cache file", timeout=60)
        return path

    def pool(self) -> dict:
        return self.http.get("mlx/api/pool").json()

    def unload(self) -> None:
        assert self.http.post("mlx/api/pool/unload", json={"model": MODEL}).status_code == 200

    def close(self) -> None:
        self.http.close()


def test_a_long_prefix_survives_unload_a_killed_runner_a_restart_and_corruption(tmp_path, models_dir):
    eos = eos_id(models_dir / NAME)
    first, second = prompt(1), prompt(2)
    with jupyter_server(tmp_path, *server_args(models_dir)) as server:
        client = Client(server, eos)
        reference, cached = client.complete(first)
        assert cached == 0
        first_file = client.new_file(set())
        assert client.complete(prompt(3, MIN_TOKENS - 40))[1] == 0  # shorter than the minimum: not written
        client.unload()
        text, cached = client.complete(first)  # a new runner: the prefix comes from disk
        assert text == reference and cached >= len(first) - 1, cached
        assert client.pool()["prompt_cache_disk_bytes"] == first_file.stat().st_size

        second_reference, _ = client.complete(second)
        second_file = client.new_file({first_file})
        os.kill(client.pool()["models"][0]["pid"], signal.SIGKILL)
        wait_until(client.pool, "the pool to notice the crash", timeout=60, done=lambda pool: not pool["models"])
        text, cached = client.complete(second[:1000] + prompt(4, 100))  # a longer conversation turn
        assert cached >= 999 and cached < 1100, cached
        assert client.files() >= {first_file, second_file}
        client.close()

    with jupyter_server(tmp_path, *server_args(models_dir)) as server:  # the same data dir
        client = Client(server, eos)
        assert client.pool()["prompt_cache_disk_bytes"] >= first_file.stat().st_size
        text, cached = client.complete(first)
        assert text == reference and cached >= len(first) - 1, cached

        for path in client.files() - {first_file, second_file}:  # the longer turn's file: garbage
            path.write_bytes(os.urandom(path.stat().st_size))
        with open(second_file, "r+b") as file:  # a readable header (this model's, these tokens), other data
            header = 8 + int.from_bytes(file.read(8), "little")
            file.seek(header)
            file.write(os.urandom(second_file.stat().st_size - header))
        with open(first_file, "r+b") as file:  # cut in half
            file.truncate(first_file.stat().st_size // 2)
        client.unload()
        assert client.complete(second) == (second_reference, 0)
        assert client.complete(first) == (reference, 0)
        client.close()


def test_the_disk_cache_stays_within_its_bound(tmp_path, models_dir):
    eos = eos_id(models_dir / NAME)
    disk_gb = 4 / 1024  # 4 MiB: room for a few of these prefixes
    with jupyter_server(tmp_path, *server_args(models_dir, disk_gb)) as server:
        client = Client(server, eos)
        sizes = []
        for seed in range(10, 18):
            before = client.files()
            client.complete(prompt(seed, 1600))
            wait_until(lambda: client.files() - before, f"prompt {seed}'s prompt-cache file", timeout=60)
            sizes.append(sum(p.stat().st_size for p in client.files()))
        reported = client.pool()["prompt_cache_disk_bytes"]
        client.close()
    bound = int(disk_gb * 1024**3)
    assert client.files(), "nothing was written"
    assert max(sizes) <= bound and reported <= bound, (sizes, reported, bound)
    assert len(client.files()) < 8, "nothing was deleted: the test's prefixes do not reach the bound"


# A slow disk (here: one whose reads end when the test creates GATE; for real: an agent's 50k-token
# prefix is GBs, read and checksummed in seconds), and how long a read may take (READ_LIMIT).
SLOW_DISK_RUNNER = """
import os, runpy, sys, time
import mlx_lm.models.cache
from jupyter_mlx_manager.runner import disk_cache, engine
disk_cache.READ_SECONDS = engine.READ_SECONDS = READ_LIMIT
load = mlx_lm.models.cache.load_prompt_cache
def slow(*args, **kwargs):
    while not os.path.exists(GATE):
        time.sleep(0.01)
    return load(*args, **kwargs)
mlx_lm.models.cache.load_prompt_cache = slow
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("jupyter_mlx_manager.runner", run_name="__main__", alter_sys=True)
"""
LONG_PROMPT = "Once upon a time there was a long prompt. " * 24


def slow_disk_runner(
    tmp_path: Path, models_dir: Path, *args: str, read_seconds: float = 120
) -> tuple[Runner, str, int]:
    """(a runner on a slow disk holding LONG_PROMPT's prefix, its greedy text, its prompt tokens),
    the prefix written by a runner before it; `tmp_path / "gate"` ends its reads."""
    options = ("--prompt-cache-dir", str(tmp_path / "prompt-cache"), "--prompt-cache-disk-bytes", str(1 << 30),
               "--prompt-cache-min-tokens", str(MIN_TOKENS))  # fmt: skip
    writer = Runner(models_dir / NAME, *options)
    try:
        expected, events = writer.run("cold", LONG_PROMPT, max_tokens=8)
        wait_until(lambda: list((tmp_path / "prompt-cache").glob("[!.]*.safetensors")), "the prefix on disk")
    finally:
        writer.close()
    script = SLOW_DISK_RUNNER.replace("GATE", repr(str(tmp_path / "gate"))).replace("READ_LIMIT", repr(read_seconds))
    runner = Runner(models_dir / NAME, *options, *args, launcher=(sys.executable, "-c", script))
    assert events[-1]["prompt_tokens"] >= MIN_TOKENS
    return runner, expected, events[-1]["prompt_tokens"]


def test_a_slow_read_from_disk_holds_up_only_its_own_request(tmp_path, models_dir):
    """The prefix is read off the generation thread: a decoding stream keeps its tokens meanwhile
    and a newcomer runs, a request cancelled while its prefix is read ends at once, and the one
    that waited starts from the prefix read (cached tokens, the same greedy output), its TTFT
    counting the wait."""
    runner, expected, prompt_tokens = slow_disk_runner(tmp_path, models_dir)
    try:
        runner.submit("stream", "Tell me a story", max_tokens=1500)
        assert runner.next_event("stream")["ev"] == "started"
        runner.submit("again", LONG_PROMPT, max_tokens=8)
        runner.submit("cancelled", LONG_PROMPT, max_tokens=8)
        # While both prefixes are being read, the stream decodes to its end and a newcomer runs.
        assert runner.collect("stream")[1][-1]["completion_tokens"] == 1500
        assert runner.run("newcomer", "Hello", max_tokens=20)[1][-1]["completion_tokens"] == 20
        assert runner.events["again"].empty() and runner.events["cancelled"].empty()
        runner.send({"op": "cancel", "id": "cancelled"})
        (done,) = runner.collect("cancelled")[1]
        assert done["finish_reason"] == "cancelled" and done["completion_tokens"] == 0, done
        time.sleep(0.5)
        (tmp_path / "gate").touch()
        text, events = runner.collect("again")
        assert text == expected
        assert events[0]["cached_tokens"] == prompt_tokens - 1 and events[-1]["ttft_ms"] >= 500, events[-1]
        assert runner.run("after", "Hello", max_tokens=4)[1][-1]["completion_tokens"] == 4
        assert runner.events["cancelled"].empty()  # its read (dropped, or done unused) started nothing
    finally:
        runner.close()


def test_a_read_that_hangs_is_given_up_and_the_prompt_prefilled(tmp_path, models_dir):
    """A disk that never answers (the gate stays shut) costs a request at most READ_SECONDS (here
    3): it is then prefilled, with the same output; while that read still hangs, no other read
    queues behind it (no memory cache here, so every such prompt would go to the disk)."""
    runner, expected, _ = slow_disk_runner(tmp_path, models_dir, "--prompt-cache-bytes", "0", read_seconds=3)
    try:
        text, events = runner.run("given-up", LONG_PROMPT, max_tokens=8)
        assert text == expected and events[0]["cached_tokens"] == 0 and events[-1]["ttft_ms"] >= 3000, events[-1]
        text, events = runner.run("not-queued", LONG_PROMPT, max_tokens=8)
        assert text == expected and events[0]["cached_tokens"] == 0 and events[-1]["ttft_ms"] < 3000, events[-1]
    finally:
        runner.close()
