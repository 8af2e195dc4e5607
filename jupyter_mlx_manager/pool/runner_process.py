"""The server's handle on one runner child process.

Reads the runner's event stream on the event loop, routes each event to the request it
belongs to, keeps the latest heartbeat figures, and notices the process exiting at once
(its stdout closes), failing every request still in flight.
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


class LoadFailed(Exception):
    """The runner could not load the model; the message says why."""


class RunnerCrashed(Exception):
    """The runner process ended while a request was in flight."""


class RunnerProcess:
    def __init__(self, model_id: str, process: asyncio.subprocess.Process, log: logging.Logger):
        self.model_id = model_id
        self.process = process
        self.log = log
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.heartbeat: dict[str, int] = {}
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._requests: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._tasks = [asyncio.ensure_future(self._read_events()), asyncio.ensure_future(self._read_stderr())]

    @classmethod
    async def start(
        cls, model_id: str, path: Path, log: logging.Logger, timeout: float = 300, args: Sequence[str] = ()
    ) -> RunnerProcess:
        """Spawn a runner and wait until its model is loaded; raise LoadFailed otherwise.

        `args`: runner options, e.g. `["--prompt-cache-bytes", "1073741824"]`."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jupyter_mlx_manager.runner", str(path), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the server's terminal is not for runners
            limit=16 * 1024 * 1024,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "JUPYTER_MLX_MANAGER_PARENT_PID": str(os.getpid())},
        )  # fmt: skip
        runner = cls(model_id, process, log)
        try:
            info = await asyncio.wait_for(asyncio.shield(runner.ready), timeout)
        except (LoadFailed, asyncio.TimeoutError) as exc:
            await runner.stop()
            if isinstance(exc, asyncio.TimeoutError):
                raise LoadFailed(f"loading {model_id} took longer than {timeout:.0f} s") from None
            raise
        runner.info = info
        return runner

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    # -- requests ------------------------------------------------------------------------------
    async def generate(self, request_id: str, command: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send one request and yield its events up to `done` or `error`."""
        if not self.alive:
            raise RunnerCrashed(f"the runner for {self.model_id} is not running")
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._requests[request_id] = events
        finished = False
        try:
            self._send({**command, "op": "generate", "id": request_id})
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
                self._send({"op": "cancel", "id": request_id})

    def _send(self, message: dict[str, Any]) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(protocol.encode(message))

    # -- life cycle ----------------------------------------------------------------------------
    async def stop(self, timeout: float = 5) -> None:
        """Ask the runner to exit; kill it if it does not within `timeout` seconds."""
        if self.alive:
            self._send({"op": "shutdown"})
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except asyncio.TimeoutError:
                self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        try:
            async for line in self.process.stdout:
                try:
                    event = protocol.decode(line)
                except ValueError:
                    self.log.warning("runner %s: unreadable line %r", self.model_id, line[:200])
                    continue
                kind = event.get("ev")
                if kind == "heartbeat":
                    self.heartbeat = {k: v for k, v in event.items() if k != "ev"}
                elif kind == "ready":
                    if not self.ready.done():
                        self.ready.set_result(event)
                elif kind == "failed":
                    if not self.ready.done():
                        self.ready.set_exception(LoadFailed(event.get("error", "the model failed to load")))
                elif "id" in event and event["id"] in self._requests:
                    self._requests[event["id"]].put_nowait(event)
        finally:
            code = await self.process.wait()
            if not self.ready.done():
                detail = "; ".join(list(self.stderr_tail)[-3:]) or "no output"
                self.ready.set_exception(LoadFailed(f"the runner exited with code {code} while loading: {detail}"))
            for queue in self._requests.values():
                queue.put_nowait(None)
            if not self.exited.done():
                self.exited.set_result(code)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                self.log.debug("runner %s: %s", self.model_id, text)
