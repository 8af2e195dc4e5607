"""What the runners that serve one request at a time share (embedding.py, vision.py, audio.py).

The text engine (engine.py) schedules many requests in a batch; these kinds run each request
to its end, in arrival order, on the one MLX thread. `SerialEngine.run` loads the model
(refusing one that ships code, never reaching the Hub), says `ready` (or `failed`), then
takes commands from `inbox` (validated by the reader: protocol.py): `shutdown`, `trim_cache`
(no prompt cache here: answered with zeros) and the kind's own ops (`handlers()`). A request cancelled while queued is answered
`cancelled` without running; a running one checks `cancelled` between its steps. The heartbeat
thread reads `progress`, `busy` and `memory` as it does for the text engine.
"""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import protocol
from .engine import ModelRefused, _rss_bytes, check_model_dir

Emit = Callable[[protocol.Event], None]


class Invalid(Exception):
    """A request field this runner refuses: an `invalid_request_error` naming `param`."""

    def __init__(self, message: str, code: str = "invalid_field", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


class SerialEngine:
    def __init__(self, model_path: Path, emit: Emit, kind: str):
        self.model_path = model_path
        self.emit = emit
        self.kind = kind  # the model kind this engine serves, as `ready` reports it
        self.inbox: queue.Queue[protocol.Command] = queue.Queue()
        self.cancelled: set[str] = set()  # added to by the command reader
        self.memory: dict[str, Any] = {
            "mlx_active_bytes": 0,
            "mlx_peak_bytes": 0,
            "kv_bytes": 0,
            "prompt_cache_bytes": 0,
        }
        self.progress = 0
        self.busy = False

    def load(self, config: dict[str, Any]) -> dict[str, Any]:
        """Load the model (MLX is imported: `self.mx`); the `ready` event's own fields."""
        raise NotImplementedError

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        """The ops this engine serves, each answering one request command."""
        raise NotImplementedError

    def run(self) -> None:
        try:
            config = check_model_dir(self.model_path)
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder: never let a loader reach the Hub
            import mlx.core as mx

            self.mx = mx
            ready = self.load(config)
        except Exception as exc:  # reported, then the runner exits
            message = str(exc) if isinstance(exc, ModelRefused) else f"{type(exc).__name__}: {exc}"
            self.emit({"ev": "failed", "error": message})
            return
        self._update_memory()
        event: protocol.ReadyEvent = {"ev": "ready", "kind": self.kind, "rss_bytes": _rss_bytes(),
                                      "tool_calling": False, "eos_token_ids": [], **ready}  # fmt: skip
        self.emit(event)
        handlers = self.handlers()
        while True:
            try:
                command = self.inbox.get(timeout=0.5)
            except queue.Empty:
                self._update_memory()
                self.cancelled.clear()  # nothing queued or running: late cancels
                continue
            op, rid = command.op, getattr(command, "id", None)
            if op == "shutdown":
                return
            if op == "trim_cache":
                self.emit({"ev": "trimmed", "prompt_cache_bytes": 0, "limit_bytes": 0})
            elif rid is None:  # a spare's `load`: never sent to a runner of these kinds
                log(f"skipped a {op} command")
            elif op not in handlers:
                self.error(rid, f"a {self.kind} model does not serve {str(op)[:40]!r}", "invalid_request_error",
                           "wrong_kind")  # fmt: skip
            elif rid in self.cancelled:  # cancelled while queued
                self.emit({"ev": "done", "id": rid, "finish_reason": "cancelled", "prompt_tokens": 0,
                           "completion_tokens": 0, "cached_tokens": 0, "ttft_ms": None})  # fmt: skip
                self.cancelled.discard(rid)
            else:
                self.busy = True
                try:
                    handlers[op](command)
                finally:
                    self.busy = False
                    self.progress += 1
                    self.cancelled.discard(rid)

    def error(self, rid: str, message: str, type_: str, code: str | None, param: str | None = None) -> None:
        event: protocol.ErrorEvent = {"ev": "error", "id": rid, "message": message[:1000], "type": type_, "code": code}
        if param is not None:
            event["param"] = param
        self.emit(event)

    def _update_memory(self) -> None:
        self.memory = {
            "mlx_active_bytes": int(self.mx.get_active_memory()),
            "mlx_peak_bytes": int(self.mx.get_peak_memory()),
            "kv_bytes": 0,
            "prompt_cache_bytes": 0,
        }


def log(message: str) -> None:
    print(f"jupyter_mlx_manager.runner: {message}", file=sys.stderr, flush=True)
