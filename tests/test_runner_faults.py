"""A runner survives bad input and bad neighbours, and a hung one is found.

Untrusted token ids and malformed commands fail only their own request; terminal events keep
the engine's cancel set empty; long prompts are prefilled in chunks (same output, other streams
keep going); library noise on stdout cannot corrupt the protocol; `RunnerProcess` kills a
runner on a failed or cancelled start and a hung runner through its watchdog.

Runners are driven over their real protocol (the test process never imports MLX). No timing is
asserted beyond generous upper bounds for stall detection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time

import pytest
from models import eos_id
from test_engine import Runner, engine_models  # noqa: F401  (the session fixture)
from waiting import wait_until_async

from jupyter_mlx_manager.pool import runner_process
from jupyter_mlx_manager.pool.runner_process import LoadFailed, RunnerProcess
from jupyter_mlx_manager.runner.protocol import GenerateCommand

LONG_PROMPT = [3 + (i * 7919) % 500 for i in range(1500)]  # token ids of the demo model (vocab 512)


class OrderedRunner(Runner):
    """A Runner that also keeps every request event in arrival order."""

    def __init__(self, *args, **kwargs):
        self.order: list[dict] = []
        super().__init__(*args, **kwargs)

    def _read(self) -> None:
        for line in self.process.stdout:
            event = json.loads(line)
            if event["ev"] in ("ready", "failed"):
                self.startup.put(event)
            elif event["ev"] == "heartbeat":
                self.heartbeat = event
            else:
                self.order.append(event)
                self._queue(event["id"]).put(event)

    def send_many(self, messages: list[dict]) -> None:
        """Several commands in one write: the runner reads them all at once."""
        self.process.stdin.write(b"".join((json.dumps(m) + "\n").encode() for m in messages))
        self.process.stdin.flush()

    def command(self, rid: str, prompt, **options) -> dict:
        return {"op": "generate", "id": rid, "kind": "completion", "prompt": prompt, "max_tokens": 16,
                "temperature": 0.0, "top_p": 1.0, "seed": None, "logit_bias": self.no_eos, "stop": [], **options}  # fmt: skip


@pytest.fixture(scope="module")
def runners(engine_models):  # noqa: F811
    started: dict[str, Runner] = {}

    def get(*args: str) -> OrderedRunner:
        key = " ".join(args)
        if key not in started:
            started[key] = OrderedRunner(engine_models / "demo", *args)
        return started[key]

    yield get
    for runner in started.values():
        runner.close()


def _last(events: list[dict]) -> dict:
    return events[-1]


def _alive(runner: Runner, pid: int) -> None:
    assert runner.process.poll() is None and runner.process.pid == pid


# -- A: untrusted token ids --------------------------------------------------------------------
def test_out_of_range_token_ids_fail_only_their_request(runners):
    runner = runners("--prompt-cache-bytes", "0")
    vocab = runner.info["vocab_size"]
    assert vocab == 512  # the demo model's embedding rows
    pid = runner.process.pid
    reference, _ = runner.run("reference", "A steady stream", max_tokens=200)
    runner.submit("steady", "A steady stream", max_tokens=200)
    assert runner.next_event("steady")["ev"] == "started"
    bad_prompts = {
        "max-int": [2147483647],
        "vocab": [vocab],
        "negative": [-1],
        "huge": [2**70],
        "late": [5, 6, vocab + 5, 7],
    }
    for rid, prompt in bad_prompts.items():
        runner.submit(rid, prompt)
    runner.submit("bias-max-int", "x", logit_bias={"2147483647": 1.0})
    runner.submit("bias-vocab", "x", logit_bias={str(vocab): 1.0})
    runner.submit("bias-negative", "x", logit_bias={"-3": 1.0})
    for rid, prompt in bad_prompts.items():
        _, events = runner.collect(rid)
        bad = next(t for t in prompt if not 0 <= t < vocab)
        assert [e["ev"] for e in events] == ["error"], events
        error = events[0]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_token_id"
        assert str(bad) in error["message"] and str(vocab - 1) in error["message"]
    for rid in ("bias-max-int", "bias-vocab", "bias-negative"):
        _, events = runner.collect(rid)
        assert events[-1]["ev"] == "error" and events[-1]["code"] == "invalid_logit_bias", events
        assert events[-1]["type"] == "invalid_request_error" and str(vocab) in events[-1]["message"]
    text, events = runner.collect("steady")
    assert _last(events)["ev"] == "done" and _last(events)["completion_tokens"] == 200
    assert text == reference
    _alive(runner, pid)
    edge, events = runner.run("edge", [0, vocab - 1], max_tokens=3)  # the range's both ends are fine
    assert _last(events)["ev"] == "done" and _last(events)["completion_tokens"] == 3
    _alive(runner, pid)


# -- B: malformed commands -----------------------------------------------------------------------
def test_malformed_commands_fail_their_request_and_the_runner_keeps_serving(runners):
    runner = runners("--prompt-cache-bytes", "0")
    pid = runner.process.pid
    runner.submit("steady", "Keep going", max_tokens=300)
    assert runner.next_event("steady")["ev"] == "started"
    base = runner.command("x", "hello")
    malformed = {
        "no-max-tokens": {k: v for k, v in base.items() if k != "max_tokens"},
        "max-tokens-string": {**base, "max_tokens": "16"},
        "max-tokens-bool": {**base, "max_tokens": True},
        "max-tokens-zero": {**base, "max_tokens": 0},
        "temperature-string": {**base, "temperature": "hot"},
        "top-p-list": {**base, "top_p": [1]},
        "seed-float": {**base, "seed": 1.5},
        "prompt-object": {**base, "prompt": {"a": 1}},
        "prompt-missing": {k: v for k, v in base.items() if k != "prompt"},
        "prompt-floats": {**base, "prompt": [1.5, 2.0]},
        "prompt-strings": {**base, "prompt": ["1", "2"]},
        "prompt-empty": {**base, "prompt": []},
        "kind-unknown": {**base, "kind": "poem"},
        "kind-missing": {k: v for k, v in base.items() if k != "kind"},
        "stop-number": {**base, "stop": 5},
        "tools-string": {**base, "tools": "all"},
        "bias-list": {**base, "logit_bias": [1, 2]},
        "bias-key": {**base, "logit_bias": {"abc": 1}},
        "bias-value": {**base, "logit_bias": {"5": "up"}},
        "chat-messages-string": {**base, "kind": "chat", "messages": "hi"},
        "chat-messages-missing": {**base, "kind": "chat"},
    }
    for rid, command in malformed.items():
        runner._queue(rid)
        runner.send({**command, "op": "generate", "id": rid})
    # Commands that cannot be answered are skipped (and logged): no id, an unknown op, not an object.
    runner.send({**base, "op": "generate"})
    runner.send({**base, "op": "generate", "id": 17})
    runner.send({**base, "op": "launch", "id": "unknown-op"})
    runner.process.stdin.write(b'42\n[1]\n"x"\nnot json\n{"op": "cancel"}\n{"op": "cancel", "id": [1]}\n')
    runner.process.stdin.flush()
    for rid in malformed:
        _, events = runner.collect(rid)
        assert events[-1]["ev"] == "error", (rid, events)
        assert events[-1]["type"] == "invalid_request_error", (rid, events)
        assert [e["ev"] for e in events] in (["error"], ["started", "error"]), (rid, events)
    text, events = runner.collect("steady")
    assert _last(events)["ev"] == "done" and _last(events)["completion_tokens"] == 300
    assert runner.run("after", "Still fine", max_tokens=3)[1][-1]["completion_tokens"] == 3
    assert "unknown-op" not in runner.events  # no event for a skipped command
    _alive(runner, pid)


# -- C: terminal events end a request once -------------------------------------------------------
def test_cancelled_set_stays_empty_after_errors_and_cancels(runners):
    runner = runners("--prompt-cache-bytes", "0")
    n = 12
    for i in range(n):  # errored requests, then (too late) cancelled
        runner.submit(f"err-{i}", [2147483647])
        assert runner.collect(f"err-{i}")[1][-1]["ev"] == "error"
        runner.send({"op": "cancel", "id": f"err-{i}"})
    for i in range(n):  # cancelled while running (direct and batched)
        runner.submit(f"run-{i}", "Cancel me", max_tokens=1500)
    for i in range(n):
        assert runner.next_event(f"run-{i}")["ev"] == "started"
        runner.send({"op": "cancel", "id": f"run-{i}"})
    for i in range(n):
        _, events = runner.collect(f"run-{i}")
        assert events[-1]["ev"] == "done" and events[-1]["finish_reason"] == "cancelled"
        runner.send({"op": "cancel", "id": f"run-{i}"})  # again, after the end
    for i in range(n):  # finished normally, then cancelled; and ids never sent
        assert runner.run(f"ok-{i}", "Short", max_tokens=2)[1][-1]["ev"] == "done"
        runner.send({"op": "cancel", "id": f"ok-{i}"})
        runner.send({"op": "cancel", "id": f"never-{i}"})
    runner.send({"op": "cancel", "id": "queued"})  # a cancel of a request yet to come is not kept either
    runner.submit("queued", "Late", max_tokens=3)
    assert runner.collect("queued")[1][-1]["ev"] == "done"
    stats = runner.engine_stats(until=lambda s: s["pending_cancels"] == 0)
    assert stats["pending_cancels"] == 0


# -- D: chunked prefill --------------------------------------------------------------------------
def test_chunked_prefill_gives_the_same_greedy_output(runners):
    small = runners("--prompt-cache-bytes", "0", "--prefill-step-size", "16")
    whole = runners("--prompt-cache-bytes", "0", "--prefill-step-size", "2048")
    before = small.engine_stats()
    reference, events = whole.run("whole", LONG_PROMPT, max_tokens=40)
    assert _last(events)["completion_tokens"] == 40
    text, events = small.run("chunked", LONG_PROMPT, max_tokens=40)
    assert text == reference and _last(events)["completion_tokens"] == 40
    after = small.engine_stats(until=lambda s: s["prefill_chunks"] > before["prefill_chunks"])
    assert after["prefill_chunks"] - before["prefill_chunks"] >= len(LONG_PROMPT) // 16 - 1
    # Prefilled in the batch too (chunk by chunk, next to another request): the same output.
    small.send_many([small.command("batched", LONG_PROMPT, max_tokens=40), small.command("other", "Hi", max_tokens=5)])
    text, _ = small.collect("batched")
    assert text == reference
    assert small.collect("other")[1][-1]["ev"] == "done"


@pytest.mark.parametrize("switch", ["migrate", "finish", "batch"])
def test_a_short_request_streams_while_a_long_prompt_prefills(runners, switch):
    runner = runners("--prompt-cache-bytes", "0", "--prefill-step-size", "64", "--switch", switch)
    long, short = f"long-{switch}", f"short-{switch}"
    # Both arrive together; the long one is admitted first (on the direct path if there is one).
    runner.send_many([runner.command(long, LONG_PROMPT, max_tokens=4), runner.command(short, "Hi", max_tokens=8)])
    short_text, short_events = runner.collect(short)
    _, long_events = runner.collect(long)
    assert _last(short_events)["completion_tokens"] == 8 and _last(long_events)["completion_tokens"] == 4
    order = [(e["id"], e["ev"]) for e in runner.order if e["id"] in (long, short)]
    short_done = order.index((short, "done"))
    long_first_text = order.index((long, "text"))
    assert short_done < long_first_text, order  # 8 tokens streamed during ~23 prefill chunks
    # A long prompt joining a stream that already runs does not hold it up either.
    mark = len(runner.order)
    runner.submit(short, "Hi", max_tokens=16)
    assert runner.next_event(short)["ev"] == "started"
    assert runner.next_event(short)["ev"] == "text"
    runner.submit(long, LONG_PROMPT, max_tokens=4)
    runner.collect(short)
    runner.collect(long)
    order = [(e["id"], e["ev"]) for e in runner.order[mark:] if e["id"] in (long, short)]
    assert order.index((short, "done")) < order.index((long, "text")), order


def test_cancelling_during_prefill(runners):
    runner = runners("--prompt-cache-bytes", "0", "--prefill-step-size", "1", "--switch", "finish")
    runner.submit("prefilling", LONG_PROMPT, max_tokens=4)  # 1,500 chunks of one token
    assert runner.next_event("prefilling")["ev"] == "started"
    runner.send({"op": "cancel", "id": "prefilling"})
    _, events = runner.collect("prefilling")
    assert events[-1]["ev"] == "done" and events[-1]["finish_reason"] == "cancelled"
    assert events[-1]["completion_tokens"] == 0
    assert runner.run("after", "Still fine", max_tokens=3)[1][-1]["completion_tokens"] == 3


# -- E: the protocol has its own file descriptor -------------------------------------------------
NOISY_RUNNER = """
import ctypes, os, sys, runpy
from jupyter_mlx_manager.runner import engine
start = engine.Engine._start
def noisy(self, *args):
    print("noise from print")
    sys.stdout.flush()
    os.write(1, b"noise from fd 1\\n")
    libc = ctypes.CDLL(None)
    libc.puts(b"noise from C stdio")
    libc.fflush(None)
    return start(self, *args)
engine.Engine._start = noisy
place = engine.Engine._place
def failing(self, request):  # an unexpected failure while placing a request
    if request.id.startswith("boom"):
        raise RuntimeError("placement failed")
    return place(self, request)
engine.Engine._place = failing
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("jupyter_mlx_manager.runner", run_name="__main__", alter_sys=True)
"""


def test_library_output_on_stdout_does_not_corrupt_the_protocol(engine_models, tmp_path):  # noqa: F811
    log = open(tmp_path / "stderr.txt", "wb")
    runner = Runner(engine_models / "demo", launcher=(sys.executable, "-c", NOISY_RUNNER), stderr=log)
    try:
        for i in range(3):
            text, events = runner.run(f"noisy-{i}", "Hello", max_tokens=5)
            assert events[-1]["ev"] == "done" and events[-1]["completion_tokens"] == 5
            # Any exception while admitting a request fails that request only.
            runner.submit(f"steady-{i}", "Go on", max_tokens=50)
            _, events = runner.run(f"boom-{i}", "Hello", max_tokens=5)
            assert events[-1]["ev"] == "error" and events[-1]["type"] == "server_error", events
            assert "placement failed" in events[-1]["message"]
            assert runner.collect(f"steady-{i}")[1][-1]["completion_tokens"] == 50
    finally:
        runner.close()
        log.close()
    # The reader thread parses every stdout line as an event (it would have died on noise); the
    # noise went to stderr instead.
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "noise from print" in stderr and "noise from fd 1" in stderr and "noise from C stdio" in stderr


class FakeProcess:
    """Just enough of asyncio.subprocess.Process for RunnerProcess: a scripted stdout."""

    def __init__(self):
        self.stdout = asyncio.StreamReader(limit=1 << 20)
        self.stderr = asyncio.StreamReader()
        self.stderr.feed_eof()
        self.stdin = None
        self.pid = 12345
        self.returncode = None
        self._exited = asyncio.Event()

    def kill(self):
        self.exit(-9)

    def exit(self, code):
        if self.returncode is None:
            self.returncode = code
            self._exited.set()
            self.stdout.feed_eof()

    async def wait(self):
        await self._exited.wait()
        return self.returncode


def test_the_event_reader_skips_what_is_not_an_event():
    async def scenario():
        process = FakeProcess()
        runner = RunnerProcess("fake", process, logging.getLogger("test"), stall_seconds=0)
        events = []

        async def consume():
            async for event in runner.generate("r1", GenerateCommand(kind="completion", prompt="x", max_tokens=1)):
                events.append(event)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        noise = [
            b"plain noise\n",
            b"42\n",
            b"[1]\n",
            b'"x"\n',
            b"null\n",
            b'{"no_ev": 1}\n',
            b'{"ev": 5, "id": "r1"}\n',
            b'{"ev": "text", "id": ["unhashable"]}\n',
            b"\xff\xfe not utf-8\n",
            b"[" * 100_000 + b"\n",  # too deep for the JSON parser
            b"x" * (2 << 20) + b"\n",  # longer than the stream's limit
        ]
        for line in noise:
            process.stdout.feed_data(line)
        process.stdout.feed_data(b'{"ev": "ready", "context_length": 8}\n')
        process.stdout.feed_data(b'{"ev": "heartbeat", "rss_bytes": 1, "progress": 3, "busy": true}\n')
        process.stdout.feed_data(b'{"ev": "text", "id": "r1", "text": "hi", "completion_tokens": 1}\n')
        for line in noise[:4]:
            process.stdout.feed_data(line)
        process.stdout.feed_data(b'{"ev": "done", "id": "r1", "finish_reason": "stop"}\n')
        await asyncio.wait_for(task, 10)
        assert (await asyncio.wait_for(runner.ready, 10))["context_length"] == 8
        assert runner.heartbeat["rss_bytes"] == 1
        assert [e["ev"] for e in events] == ["text", "done"]
        assert runner.alive
        process.exit(0)
        assert await asyncio.wait_for(runner.exited, 10) == 0
        await runner.stop()

    asyncio.run(scenario())


# -- F: a failed or cancelled start kills the child ------------------------------------------------
@pytest.mark.parametrize("how", ["cancelled", "timeout"])
def test_a_start_that_does_not_finish_kills_the_child(engine_models, monkeypatch, how):  # noqa: F811
    spawned = []
    spawn = asyncio.create_subprocess_exec

    async def recording_spawn(*args, **kwargs):
        process = await spawn(*args, **kwargs)
        spawned.append(process)
        return process

    monkeypatch.setattr(runner_process.asyncio, "create_subprocess_exec", recording_spawn)

    async def scenario():
        log = logging.getLogger("test")
        if how == "timeout":
            with pytest.raises(LoadFailed, match="longer than"):
                await RunnerProcess.start("demo", engine_models / "demo", log, timeout=0.05)
        else:
            task = asyncio.ensure_future(RunnerProcess.start("demo", engine_models / "demo", log))
            await wait_until_async(lambda: spawned, "the runner process to spawn", interval=0.01)
            await asyncio.sleep(0.2)  # loading
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        (process,) = spawned
        assert process.returncode is not None  # killed and reaped before the exception came out

    asyncio.run(scenario())


# -- G: hung runners -----------------------------------------------------------------------------
def test_a_stopped_runner_is_killed_and_its_requests_fail_with_runner_stalled(engine_models):  # noqa: F811
    stall = 2.0
    no_eos = {str(eos_id(engine_models / "demo")): -100}
    command = GenerateCommand(  # each request sets its prompt (and length)
        kind="completion", prompt="", max_tokens=1, temperature=0.0, top_p=1.0, seed=None, logit_bias=no_eos, stop=[]
    )

    async def scenario():
        log = logging.getLogger("test")
        runner = await RunnerProcess.start(
            "demo", engine_models / "demo", log, args=["--prompt-cache-bytes", "0", "--prefill-step-size", "16"],
            stall_seconds=stall,
        )  # fmt: skip
        pid = runner.pid
        try:
            await asyncio.sleep(stall + 1)  # idle for longer than stall_seconds: nothing to watch
            # A request that runs for longer than stall_seconds is not a stall: it makes progress.
            started = time.monotonic()
            events = [
                e
                async for e in runner.generate(
                    "healthy", command.model_copy(update={"prompt": LONG_PROMPT, "max_tokens": 500})
                )
            ]
            assert events[-1]["ev"] == "done" and events[-1]["completion_tokens"] == 500, events[-1]
            healthy_seconds = time.monotonic() - started
            assert runner.alive and not runner.stalled

            events = []
            stopped_at = None
            async for event in runner.generate(
                "stalled", command.model_copy(update={"prompt": "Once upon", "max_tokens": 1500})
            ):
                events.append(event)
                if event["ev"] == "text" and stopped_at is None:
                    os.kill(pid, signal.SIGSTOP)
                    stopped_at = time.monotonic()
            detected = time.monotonic() - stopped_at
            error = events[-1]
            assert error["ev"] == "error" and error["code"] == "runner_stalled", error
            assert error["type"] == "server_error"
            assert detected < stall + 5, detected  # about stall_seconds (+1 s); generous for a loaded CI box
            code = await asyncio.wait_for(runner.exited, 10)
            assert code == -signal.SIGKILL
            assert not runner.alive
            with pytest.raises(runner_process.RunnerCrashed):
                async for _ in runner.generate("after", command.model_copy(update={"prompt": "x"})):
                    pass
            return healthy_seconds, detected
        finally:
            if runner.process.returncode is None:
                os.kill(pid, signal.SIGCONT)
                runner.process.kill()
            await runner.stop()

    healthy_seconds, detected = asyncio.run(scenario())
    print(f"healthy request: {healthy_seconds:.1f} s; stall detected {detected:.2f} s after SIGSTOP")


def test_a_runner_that_stops_making_progress_is_killed(engine_models, monkeypatch, tmp_path):  # noqa: F811
    """Heartbeats keep coming but the generation thread is stuck (here: a step that sleeps)."""
    script = tmp_path / "stuck_runner.py"
    script.write_text(
        "import runpy, sys, time\n"
        "from jupyter_mlx_manager.runner import engine\n"
        "def stuck(self):\n"
        "    time.sleep(3600)\n"
        "engine.Engine._step_direct = stuck\n"
        "engine.Engine._step_batch = stuck\n"
        "sys.argv = ['runner', *sys.argv[1:]]\n"
        "runpy.run_module('jupyter_mlx_manager.runner', run_name='__main__', alter_sys=True)\n"
    )
    spawn = asyncio.create_subprocess_exec

    async def stuck_spawn(program, *args, **kwargs):
        assert args[:2] == ("-m", "jupyter_mlx_manager.runner")
        return await spawn(program, str(script), *args[2:], **kwargs)

    monkeypatch.setattr(runner_process.asyncio, "create_subprocess_exec", stuck_spawn)

    async def scenario():
        runner = await RunnerProcess.start("demo", engine_models / "demo", logging.getLogger("test"), stall_seconds=1.5)
        runner.stuck_seconds = 1.5  # the default (STUCK_FACTOR × stall_seconds) would make this test slow
        try:
            started = time.monotonic()
            events = [
                e async for e in runner.generate("stuck", GenerateCommand(kind="completion", prompt="x", max_tokens=3))
            ]
            assert events[-1]["ev"] == "error" and events[-1]["code"] == "runner_stalled", events
            assert "no progress" in events[-1]["message"]
            assert time.monotonic() - started < 1.5 + 5
            assert runner.heartbeat.get("busy") is True  # heartbeats kept coming: it was the progress
            assert await asyncio.wait_for(runner.exited, 10) == -signal.SIGKILL
        finally:
            await runner.stop()

    asyncio.run(scenario())
