"""The server's handle on one runner child process.

Reads the runner's event stream on the event loop, routes each event to the request it
belongs to, keeps the latest heartbeat figures, and notices the process exiting at once
(its stdout closes), failing every request still in flight. A line that is not a JSON object
with an "ev" is logged and skipped, never fatal to the reader.

A watchdog finds hung runners: while requests are in flight, a runner whose heartbeats stop
(e.g. SIGSTOP, a deadlock that holds the interpreter) for `stall_seconds`, or whose generation
thread makes no progress although it has work for `STUCK_FACTOR` times as long (a hung Metal
command buffer), is killed (SIGKILL); its requests end with an `error` event, code
"runner_stalled". Progress moves per prefill chunk and decode step; one step of a big model
under load can still take tens of seconds, hence the longer bound for a runner that is alive.

A *spare* (`RunnerProcess.spawn()` without a path) is a runner that has imported MLX and
mlx-lm and waits for a model: `load()` hands it one (a `load` command), which
skips the seconds of imports a fresh process pays. Memory figures: `base_bytes` (the RSS the
runner reported when its model was ready), and from the heartbeats `kv_bytes` (live KV caches)
and `prompt_cache_bytes`; `trim_cache()` caps the runner's prompt cache (`trim_cache` command)
and waits for its answer.

Runners of other kinds (`--kind embedding`: runner/embedding.py; `transcription`, `speech`:
runner/audio.py) speak the same protocol; `embed()`, `transcribe()` and `speak()` send their
one command and yield its events like `generate()`. Every command sent is one of
runner/protocol.py's models, every event read one of its TypedDicts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ..runner import protocol
from ..runner.protocol import (
    CancelCommand,
    Command,
    EmbedCommand,
    ErrorEvent,
    GenerateCommand,
    HeartbeatEvent,
    LoadCommand,
    ReadyEvent,
    RequestEvent,
    ShutdownCommand,
    SpareEvent,
    SpeakCommand,
    TranscribeCommand,
    TrimCacheCommand,
    TrimmedEvent,
)

STUCK_FACTOR = 10  # alive but no progress: killed after this many times stall_seconds


class LoadFailed(Exception):
    """The runner could not load the model; the message says why."""


class RunnerCrashed(Exception):
    """The runner process ended while a request was in flight."""


class RunnerProcess:
    def __init__(
        self, model_id: str, process: asyncio.subprocess.Process, log: logging.Logger, stall_seconds: float = 30
    ):
        self.model_id = model_id
        self.process = process
        self.log = log
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[ReadyEvent] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.heartbeat: dict[str, Any] = {}  # the latest `heartbeat` event's figures
        self.info: ReadyEvent | dict[str, Any] = {}  # the `ready` event
        self.spare: asyncio.Future[SpareEvent] = loop.create_future()  # a spare's imports are done
        self._trims: list[asyncio.Future[TrimmedEvent | None]] = []
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.stall_seconds = float(stall_seconds)
        self.stuck_seconds = STUCK_FACTOR * self.stall_seconds
        self.stalled = False
        self._requests: dict[str, asyncio.Queue[RequestEvent | None]] = {}
        self._alive_at = loop.time()  # the last line from the runner
        self._progress_at = loop.time()  # the last sign of generation progress (or of having no work)
        self._progress: Any = None
        self._tasks = [asyncio.ensure_future(self._read_events()), asyncio.ensure_future(self._read_stderr())]
        self._watchdog = asyncio.ensure_future(self._watch()) if self.stall_seconds > 0 else None

    @classmethod
    async def spawn(
        cls,
        log: logging.Logger,
        path: Path | None = None,
        args: Sequence[str] = (),
        stall_seconds: float = 30,
        model_id: str | None = None,
    ) -> RunnerProcess:
        """Spawn a runner for the model at `path`, or a spare (no path), without waiting."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jupyter_mlx_manager.runner", *([str(path)] if path is not None else []), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the server's terminal is not for runners
            limit=16 * 1024 * 1024,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "JUPYTER_MLX_MANAGER_PARENT_PID": str(os.getpid())},
        )  # fmt: skip
        try:
            return cls(model_id or "(spare runner)", process, log, stall_seconds=stall_seconds)
        except BaseException:
            _kill(process)
            raise

    @classmethod
    async def start(
        cls,
        model_id: str,
        path: Path,
        log: logging.Logger,
        timeout: float = 300,
        args: Sequence[str] = (),
        stall_seconds: float = 30,
    ) -> RunnerProcess:
        """Spawn a runner and wait until its model is loaded; raise LoadFailed otherwise.

        `args`: runner options, e.g. `["--prompt-cache-bytes", "1073741824"]`. `stall_seconds`:
        see the watchdog (0 turns it off). On any exception, cancellation included, the child
        is killed before the exception propagates."""
        runner = await cls.spawn(log, path, args, stall_seconds, model_id=model_id)
        await runner._wait_ready(timeout)
        return runner

    async def load(
        self, model_id: str, path: Path, timeout: float = 300, options: dict[str, Any] | None = None
    ) -> RunnerProcess:
        """Hand a spare its model (`options`: `prompt_cache_bytes`, `prefill_step_size`) and wait
        until it is loaded; LoadFailed otherwise. On any exception the child is killed."""
        self.model_id = model_id
        try:
            if not self.alive:
                raise LoadFailed(f"the spare runner had exited (code {self.process.returncode})")
            self._send(LoadCommand(path=str(path), **(options or {})))
        except BaseException:
            await self._abort()
            raise
        await self._wait_ready(timeout)
        return self

    async def _wait_ready(self, timeout: float) -> None:
        try:
            info = await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        except BaseException as exc:
            await self._abort()
            if isinstance(exc, TimeoutError):
                raise LoadFailed(f"loading {self.model_id} took longer than {timeout:.0f} s") from None
            raise
        self.info = info

    # -- memory --------------------------------------------------------------------------------
    @property
    def base_bytes(self) -> int:
        """The runner's RSS when its model was ready (interpreter, libraries, weights)."""
        return int(self.info.get("rss_bytes") or 0)

    @property
    def kv_bytes(self) -> int:
        return int(self.heartbeat.get("kv_bytes") or 0)

    @property
    def prompt_cache_bytes(self) -> int:
        return int(self.heartbeat.get("prompt_cache_bytes") or 0)

    async def trim_cache(self, limit: int, timeout: float = 5) -> TrimmedEvent | None:
        """Cap the runner's prompt cache at `limit` bytes (trimmed now, least recently used
        first); the runner's answer (`prompt_cache_bytes`, `limit_bytes`), None if none came."""
        if not self.serving:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._trims.append(waiter)
        self._send(TrimCacheCommand(bytes=max(0, int(limit))))
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            if waiter in self._trims:
                self._trims.remove(waiter)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    @property
    def serving(self) -> bool:
        """Alive and not being killed (a stalled runner is on its way out): takes new requests."""
        return self.alive and not self.stalled

    # -- requests ------------------------------------------------------------------------------
    def generate(self, request_id: str, command: GenerateCommand) -> AsyncIterator[RequestEvent]:
        """Send one generation request and yield its events up to `done` or `error`."""
        return self._request(request_id, command)

    def embed(self, request_id: str, command: EmbedCommand) -> AsyncIterator[RequestEvent]:
        """Send one embedding request (an embedding runner's) and yield its `embeddings`
        events up to `done` or `error`."""
        return self._request(request_id, command)

    def transcribe(self, request_id: str, command: TranscribeCommand) -> AsyncIterator[RequestEvent]:
        """Send one transcription (a transcription runner's); yields `transcription`, `done`."""
        return self._request(request_id, command)

    def speak(self, request_id: str, command: SpeakCommand) -> AsyncIterator[RequestEvent]:
        """Send one speech request (a speech runner's); yields `audio` events up to `done`."""
        return self._request(request_id, command)

    async def _request(self, request_id: str, command: Command) -> AsyncIterator[RequestEvent]:
        if not self.alive or self.stalled:
            raise RunnerCrashed(f"the runner for {self.model_id} is not running")
        events: asyncio.Queue[RequestEvent | None] = asyncio.Queue()
        self._requests[request_id] = events
        finished = False
        try:
            self._send(command.model_copy(update={"id": request_id}))
            while True:
                event = await events.get()
                if event is None:
                    raise RunnerCrashed(f"the runner for {self.model_id} stopped (exit code {self.process.returncode})")
                yield event
                if event["ev"] in ("done", "error"):
                    finished = True
                    return
        finally:
            self._requests.pop(request_id, None)
            if not finished and self.alive:
                self._send(CancelCommand(id=request_id))

    def _send(self, message: Command) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(protocol.encode(message))

    # -- life cycle ----------------------------------------------------------------------------
    async def stop(self, timeout: float = 5) -> None:
        """Ask the runner to exit; kill it if it does not within `timeout` seconds."""
        if self.alive:
            self._send(ShutdownCommand())
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except TimeoutError:
                _kill(self.process)
        await self.process.wait()
        await self._join_tasks()
        if self.ready.done() and not self.ready.cancelled():
            self.ready.exception()  # retrieved: nobody waits for it now (a spare never loaded)

    async def _abort(self) -> None:
        """Kill the runner at once (a failed or cancelled start) and reap it."""
        _kill(self.process)
        try:
            await self.process.wait()
        finally:
            await self._join_tasks()
            if self.ready.done() and not self.ready.cancelled():
                self.ready.exception()  # retrieved: nobody else waits for it now

    async def _join_tasks(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.gather(*self._tasks, *([self._watchdog] if self._watchdog else []), return_exceptions=True)

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        stdout = self.process.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line longer than the stream's limit: dropped
                    self.log.warning("runner %s: skipped an overlong line", self.model_id)
                    continue
                if not line:
                    break
                self._on_line(line)
        finally:
            try:
                code = await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:  # stdout closed but the process lives on: it is of no use
                _kill(self.process)
                code = await self.process.wait()
            if not self.ready.done():
                detail = "; ".join(list(self.stderr_tail)[-3:]) or "no output"
                self.ready.set_exception(LoadFailed(f"the runner exited with code {code} while loading: {detail}"))
            for queue in self._requests.values():
                queue.put_nowait(None)
            for waiter in self._trims:
                if not waiter.done():
                    waiter.set_result(None)
            if not self.exited.done():
                self.exited.set_result(code)
            if self._watchdog is not None:
                self._watchdog.cancel()

    def _on_line(self, line: bytes) -> None:
        """Handle one line of the event stream; anything but an event object is skipped."""
        self._alive_at = asyncio.get_running_loop().time()
        try:
            event = protocol.decode(line)
        except Exception:  # not JSON, or nested too deep
            self.log.warning("runner %s: unreadable line %r", self.model_id, line[:200])
            return
        if not isinstance(event, dict) or not isinstance(event.get("ev"), str):
            self.log.warning("runner %s: skipped a line that is not an event %r", self.model_id, line[:200])
            return
        kind = event["ev"]
        if kind == "heartbeat":
            heartbeat: HeartbeatEvent = event
            self.heartbeat = {k: v for k, v in heartbeat.items() if k != "ev"}
            progress = event.get("progress")
            if progress is None or not event.get("busy", True) or progress != self._progress:
                self._progress, self._progress_at = progress, self._alive_at
        elif kind == "ready":
            if not self.ready.done():
                self.ready.set_result(event)
        elif kind == "spare":
            if not self.spare.done():
                self.spare.set_result(event)
        elif kind == "trimmed":
            if isinstance(event.get("prompt_cache_bytes"), int):
                self.heartbeat["prompt_cache_bytes"] = event["prompt_cache_bytes"]
            if self._trims:
                waiter = self._trims.pop(0)
                if not waiter.done():
                    waiter.set_result(event)
        elif kind == "failed":
            if not self.ready.done():
                self.ready.set_exception(LoadFailed(str(event.get("error") or "the model failed to load")))
        else:
            rid = event.get("id")
            if isinstance(rid, str) and rid in self._requests and not self.stalled:
                self._progress_at = self._alive_at  # a request event is progress too
                self._requests[rid].put_nowait(event)

    async def _watch(self) -> None:
        """Kill the runner when it has requests in flight and shows no life or no progress for
        `stall_seconds`, or no progress for `stuck_seconds` (see the module docstring)."""
        loop = asyncio.get_running_loop()
        interval = min(0.5, self.stall_seconds / 4)
        ticked = loop.time()
        while self.alive:
            await asyncio.sleep(interval)
            now = loop.time()
            lag = now - ticked - interval
            ticked = now
            if lag > 1:  # this event loop was held up: the runner's lines may be waiting unread
                self._alive_at += lag
                self._progress_at += lag
            if not self._requests or not self.alive:
                continue
            silent, stuck = now - self._alive_at, now - self._progress_at
            if silent < self.stall_seconds and stuck < self.stuck_seconds:
                continue
            if silent >= self.stall_seconds:
                self._stalled(f"sent nothing for {silent:.0f} s")
            else:
                self._stalled(f"made no progress for {stuck:.0f} s")
            return

    def _stalled(self, why: str) -> None:
        self.stalled = True
        self.log.warning("runner %s (pid %d) %s with requests in flight: killing it", self.model_id, self.pid, why)
        message = f"the runner for {self.model_id} {why} and was stopped; the model is loaded again on the next request"
        requests, self._requests = self._requests, {}
        for rid, queue in requests.items():
            error: ErrorEvent = {
                "ev": "error", "id": rid, "message": message, "type": "server_error", "code": "runner_stalled"
            }  # fmt: skip
            queue.put_nowait(error)
        _kill(self.process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        stderr = self.process.stderr
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # an overlong line
                continue
            if not line:
                break
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                self.log.debug("runner %s: %s", self.model_id, text)


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
