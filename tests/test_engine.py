"""The runner's scheduler: direct path, continuous batching, switching, prompt cache.

Runners are driven over their real stdin/stdout protocol (the test process never imports
MLX). No timing is asserted anywhere: only outputs, counters and protocol fields.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from models import build_models, eos_id
from waiting import wait_until

PROMPTS = [f"Request number {i}: " + "tell me more " * i for i in range(8)]


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory) -> Path:
    return build_models(tmp_path_factory.mktemp("engine-models"), ["demo"])


class Runner:
    """A runner child process and a reader thread that sorts its events by request."""

    LAUNCHER = (sys.executable, "-m", "jupyter_mlx_manager.runner")

    def __init__(self, model: Path, *args: str, launcher: tuple[str, ...] = LAUNCHER, stderr=subprocess.DEVNULL):
        self.process = subprocess.Popen(
            [*launcher, str(model), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )  # fmt: skip
        self.events: dict[str, queue.Queue] = {}
        self.lock = threading.Lock()
        self.startup: queue.Queue = queue.Queue()
        self.heartbeat: dict | None = None
        self.no_eos = {str(eos_id(model)): -100}
        threading.Thread(target=self._read, daemon=True).start()
        self.info = self.startup.get(timeout=120)
        assert self.info["ev"] == "ready", self.info

    def _read(self) -> None:
        for line in self.process.stdout:
            event = json.loads(line)
            if event["ev"] in ("ready", "failed"):
                self.startup.put(event)
            elif event["ev"] == "heartbeat":
                self.heartbeat = event
            else:
                self._queue(event["id"]).put(event)

    def _queue(self, rid: str) -> queue.Queue:
        with self.lock:
            return self.events.setdefault(rid, queue.Queue())

    def send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def submit(self, rid: str, prompt: str, **options) -> None:
        self._queue(rid)
        command = {"kind": "completion", "prompt": prompt, "max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": None,
                   "logit_bias": self.no_eos, "stop": [], **options}  # fmt: skip
        self.send({"op": "generate", "id": rid, **command})

    def next_event(self, rid: str) -> dict:
        return self._queue(rid).get(timeout=120)

    def collect(self, rid: str) -> tuple[str, list[dict]]:
        events = []
        while not events or events[-1]["ev"] not in ("done", "error"):
            events.append(self.next_event(rid))
        return "".join(e["text"] for e in events if e["ev"] == "text"), events

    def run(self, rid: str, prompt: str, **options) -> tuple[str, list[dict]]:
        self.submit(rid, prompt, **options)
        return self.collect(rid)

    def engine_stats(self, until=lambda stats: True) -> dict:
        """The scheduler counters of the first heartbeat after this call that satisfies `until`."""
        self.heartbeat = None
        heartbeat = wait_until(
            lambda: self.heartbeat,
            "a heartbeat whose counters satisfy the test",
            timeout=10,
            interval=0.05,
            done=lambda heartbeat: heartbeat is not None and until(heartbeat["engine"]),
        )
        return heartbeat["engine"]

    def close(self) -> None:
        try:
            self.send({"op": "shutdown"})
            self.process.stdin.close()
            self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture(scope="module")
def runners(engine_models):
    """Runners by option string, started on first use, stopped at the end of the module."""
    started: dict[str, Runner] = {}

    def get(*args: str) -> Runner:
        key = " ".join(args)
        if key not in started:
            started[key] = Runner(engine_models / "demo", *args)
        return started[key]

    yield get
    for runner in started.values():
        runner.close()


def _done(events: list[dict]) -> dict:
    assert events[-1]["ev"] == "done", events[-1]
    return events[-1]


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "top_p": 0.9}])
def test_output_is_the_same_alone_and_in_a_batch_of_8(runners, sampling):
    runner = runners("--prompt-cache-bytes", "0")
    options = lambda i: {**sampling, "max_tokens": 40, **({"seed": 100 + i} if sampling["temperature"] else {})}  # noqa: E731
    alone = [runner.run(f"alone-{i}", p, **options(i)) for i, p in enumerate(PROMPTS)]
    before = runner.engine_stats()
    for i, prompt in enumerate(PROMPTS):  # all queued at once: one batch
        runner.submit(f"batch-{i}", prompt, **options(i))
    batched = [runner.collect(f"batch-{i}") for i in range(len(PROMPTS))]
    after = runner.engine_stats(until=lambda s: s["batch_steps"] > before["batch_steps"])
    assert after["batch_steps"] > before["batch_steps"], "the 8 requests did not run batched"
    for (text, events), (solo_text, solo_events) in zip(batched, alone):
        assert text == solo_text
        assert _done(events)["completion_tokens"] == _done(solo_events)["completion_tokens"] == 40
        assert _done(events)["finish_reason"] == "length"
        assert events[0]["ev"] == "started" and events[0]["cached_tokens"] == 0
    if sampling["temperature"]:
        assert len({t for t, _ in alone}) > 1, "seeded sampling gave the same text for every seed"


@pytest.mark.parametrize("switch", ["migrate", "finish"])
def test_a_direct_request_keeps_its_output_when_others_join_and_leave(runners, switch):
    runner = runners("--prompt-cache-bytes", "0", "--switch", switch)
    long = dict(max_tokens=1000, temperature=1.0, seed=42)
    reference, _ = runner.run("reference", "Once upon a time", **long)
    before = runner.engine_stats()
    runner.submit("long", "Once upon a time", **long)
    first = [runner.next_event("long"), runner.next_event("long")]
    assert [e["ev"] for e in first] == ["started", "text"]  # decoding on the direct path now
    short_text, short_events = runner.run("short", "Hi", max_tokens=10, temperature=1.0, seed=1)
    text, events = runner.collect("long")
    text = "".join(e["text"] for e in first[1:]) + text
    assert _done(short_events)["completion_tokens"] == 10
    assert text == reference and _done(events)["completion_tokens"] == 1000
    moved_back = lambda s: switch != "migrate" or s["demotions"] > before["demotions"]  # noqa: E731
    after = runner.engine_stats(until=lambda s: s["batch_steps"] > before["batch_steps"] and moved_back(s))
    if switch == "migrate":  # into the batch with its cache, and back once alone again
        assert after["migrations"] == before["migrations"] + 1
        assert after["demotions"] == before["demotions"] + 1
    else:  # finished on its own path while the short one was batched
        assert after["migrations"] == before["migrations"]
        assert after["batch_steps"] > before["batch_steps"]
    assert runner.run("short-again", "Hi", max_tokens=10, temperature=1.0, seed=1)[0] == short_text


def test_stop_strings_limits_cancel_and_errors_inside_a_batch(runners):
    runner = runners("--prompt-cache-bytes", "0")
    seeded = dict(max_tokens=60, temperature=1.0, seed=7)
    full, _ = runner.run("full", "Tell me", **seeded)
    stop = next(
        full[i : i + 2] for i in range(5, len(full) - 2) if full[i : i + 2].strip() and full.find(full[i : i + 2]) == i
    )

    runner.submit("runs-long", "Keep going", max_tokens=1500)
    assert runner.next_event("runs-long")["ev"] == "started"
    runner.submit("stopped", "Tell me", stop=[stop], **seeded)
    runner.submit("short", "Short one", max_tokens=5)
    runner.submit("cancelled", "Cancel me", max_tokens=1500)
    runner.submit("too-long", "word " * 3000, max_tokens=5)
    runner.submit("bad-bias", "x", logit_bias={"999999": 1.0})
    assert runner.next_event("cancelled")["ev"] == "started"
    runner.send({"op": "cancel", "id": "cancelled"})

    text, events = runner.collect("stopped")
    assert text == full[: full.find(stop)] and _done(events)["finish_reason"] == "stop"
    text, events = runner.collect("short")
    assert _done(events)["completion_tokens"] == 5 and _done(events)["finish_reason"] == "length"
    _, events = runner.collect("cancelled")
    assert _done(events)["finish_reason"] == "cancelled"
    _, events = runner.collect("too-long")
    assert events[-1]["ev"] == "error" and events[-1]["code"] == "context_length_exceeded"
    _, events = runner.collect("bad-bias")
    assert events[-1]["ev"] == "error" and events[-1]["code"] == "invalid_logit_bias"
    runner.send({"op": "cancel", "id": "runs-long"})
    _, events = runner.collect("runs-long")
    assert _done(events)["finish_reason"] == "cancelled"
    assert runner.run("after", "Still fine", max_tokens=3)[1][-1]["completion_tokens"] == 3


def test_prompt_cache_reuses_prefixes_with_the_same_output(runners):
    cold = runners("--prompt-cache-bytes", "0")
    warm = runners("--prompt-cache-bytes", str(64 << 20))
    shared = "You are a helpful assistant who answers in short sentences. " * 20
    questions = ["What is MLX?", "Where is Paris?", "Count to ten.", "Say hello."]

    def ask(runner, rid, question, **options):
        return runner.run(rid, shared + question, max_tokens=24, **options)

    text, events = ask(warm, "first", questions[0])
    assert events[0]["cached_tokens"] == 0
    prompt_tokens = events[0]["prompt_tokens"]
    assert prompt_tokens > 200
    # One at a time (direct path), then all at once (batched): prefix hits, same output as cold.
    for i, question in enumerate(questions[1:]):
        text, events = ask(warm, f"seq-{i}", question, temperature=1.0, seed=i)
        assert events[0]["cached_tokens"] > prompt_tokens * 0.8
        assert _done(events)["cached_tokens"] == events[0]["cached_tokens"]
        assert text == ask(cold, f"cold-{i}", question, temperature=1.0, seed=i)[0]
    for i, question in enumerate(questions):
        warm.submit(f"par-{i}", shared + question, max_tokens=24)
    for i, question in enumerate(questions):
        text, events = warm.collect(f"par-{i}")
        assert events[0]["cached_tokens"] > prompt_tokens * 0.8
        assert text == ask(cold, f"cold-par-{i}", question)[0]
    # The exact same prompt again: all but the last token come from the cache.
    text, events = ask(warm, "again", questions[0])
    assert events[0]["cached_tokens"] == events[0]["prompt_tokens"] - 1
    assert text == ask(cold, "cold-again", questions[0])[0]
    assert 0 < warm.engine_stats(until=lambda s: s["prompt_cache_bytes"] > 0)["prompt_cache_bytes"] <= 64 << 20
    assert cold.engine_stats()["prompt_cache_bytes"] == 0


def test_prompt_cache_stays_within_its_byte_budget(runners):
    budget = 200_000  # about three short prompts' KV caches of the tiny model
    runner = runners("--prompt-cache-bytes", str(budget))
    first = "Alpha beta gamma delta"
    assert runner.run("p0", first, max_tokens=8)[1][0]["cached_tokens"] == 0
    assert runner.run("p0-again", first, max_tokens=8)[1][0]["cached_tokens"] > 0
    for i in range(8):  # unrelated prompts push it out, least recently used first
        runner.run(f"other-{i}", f"{i} unrelated words {i}", max_tokens=8)
        assert 0 < runner.engine_stats()["prompt_cache_bytes"] <= budget
    assert runner.run("p0-late", first, max_tokens=8)[1][0]["cached_tokens"] == 0
