"""The pool: which models are loaded, in which runner, for how long.

Loads are shared (two loads of one model wait on one runner start). Before spawning, the
memory a model needs is estimated from its weight files; if the model-count limit or the
memory budget would be exceeded, idle unpinned models are unloaded, least recently used
first. Keep-alive follows Ollama: seconds after the last request; negative = forever;
0 = unload as soon as the model is idle. A runner that dies is noticed at once: its model
is dropped from the pool and its requests end with an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadRequest, Conflict, MLXError, NotFound
from ..models.catalog import ModelCatalog, ships_code, validate_model_id, weights_bytes
from .runner_process import LoadFailed, RunnerProcess

# Beyond the weights: KV cache, activations and the interpreter (a rough, safe margin).
RUNNER_OVERHEAD_BYTES = 200 * 1024**2
ESTIMATE_FACTOR = 1.2


class PoolBusy(MLXError):
    """Every loaded model is busy or pinned; retrying later may succeed."""

    status_code = 503
    reason = "pool_busy"


class ModelLoadError(MLXError):
    """The model is local but cannot be loaded (bad files, refused code, too big)."""

    status_code = 422
    reason = "load_failed"


MAX_KEEP_ALIVE_SECONDS = 10 * 365 * 86400


def validate_keep_alive(keep_alive: object) -> None:
    """Seconds (negative = forever): a finite number, at most ten years."""
    if keep_alive is None:
        return
    if (
        isinstance(keep_alive, bool)
        or not isinstance(keep_alive, (int, float))
        or not math.isfinite(keep_alive)
        or keep_alive > MAX_KEEP_ALIVE_SECONDS
    ):
        raise BadRequest(
            "keep_alive must be a finite number of seconds, at most ten years (negative = forever)",
            reason="invalid_keep_alive",
        )


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


@dataclass
class LoadedModel:
    model_id: str
    path: Path
    runner: RunnerProcess
    estimate_bytes: int
    keep_alive: float
    pinned: bool = False
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    requests: int = 0
    in_flight: int = 0

    @property
    def memory_bytes(self) -> int:
        """Measured resident memory once the runner reports it, else the estimate."""
        return int(self.runner.heartbeat.get("rss_bytes") or self.estimate_bytes)

    @property
    def expires_at(self) -> float | None:
        if self.pinned or self.keep_alive < 0 or self.in_flight:
            return None
        return self.last_used + self.keep_alive

    @property
    def context_length(self) -> int:
        return int(self.runner.info.get("context_length", 0))

    def status(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "status": "busy" if self.in_flight else "loaded",
            "pinned": self.pinned,
            "keep_alive": self.keep_alive,
            "expires_at": _iso(self.expires_at),
            "memory_bytes": self.memory_bytes,
            "mlx_active_bytes": self.runner.heartbeat.get("mlx_active_bytes"),
            "mlx_peak_bytes": self.runner.heartbeat.get("mlx_peak_bytes"),
            "pid": self.runner.pid,
            "loaded_at": _iso(self.loaded_at),
            "last_used": _iso(self.last_used),
            "requests": self.requests,
            "in_flight": self.in_flight,
            "context_length": self.context_length,
            "tool_calling": bool(self.runner.info.get("tool_calling")),
        }


class ModelPool:
    def __init__(
        self,
        catalog: ModelCatalog,
        max_memory_bytes: int,
        max_loaded_models: int,
        default_keep_alive: float,
        log: logging.Logger,
        on_event=None,
        runner_args: list[str] | None = None,
    ):
        self.catalog = catalog
        self.runner_args = list(runner_args or [])  # options for every runner spawned
        self.max_memory_bytes = max_memory_bytes
        self.max_loaded_models = max_loaded_models
        self.default_keep_alive = default_keep_alive
        self.log = log
        # on_event(action, model_id, **details) — for the audit trail (load, unload, evict, crash).
        self.on_event = on_event or (lambda *args, **kwargs: None)
        self._models: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._lock = asyncio.Lock()  # serialises admission decisions (eviction + spawn)
        self._holds: collections.Counter[str] = collections.Counter()  # requests waiting for a model
        self._reaper: asyncio.Task | None = None

    # -- public API ----------------------------------------------------------------------------
    def get_loaded_model(self, model_id: str) -> LoadedModel | None:
        return self._models.get(model_id)

    def loaded_models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def status(self) -> dict[str, Any]:
        return {
            "models": [m.status() for m in self._models.values()],
            "loading": sorted(self._loading),
            "limits": {
                "max_memory_bytes": self.max_memory_bytes,
                "max_loaded_models": self.max_loaded_models,
                "default_keep_alive": self.default_keep_alive,
            },
            "memory_used_bytes": sum(m.memory_bytes for m in self._models.values()),
        }

    async def load(
        self, model_id: str, pin: bool | None = None, keep_alive: float | None = None, by: str | None = None
    ) -> LoadedModel:
        """Load a local model (or return it if loaded); `pin`/`keep_alive` update its settings."""
        validate_model_id(model_id)
        if self._reaper is None:
            self.start()
        validate_keep_alive(keep_alive)
        model = self._models.get(model_id)
        if model is None:
            future = self._loading.get(model_id)
            if future is None:
                future = self._loading[model_id] = asyncio.ensure_future(self._load(model_id, keep_alive, by))
                future.add_done_callback(lambda _: self._loading.pop(model_id, None))
            model = await asyncio.shield(future)
        if pin is not None:
            model.pinned = bool(pin)
        if keep_alive is not None:
            model.keep_alive = float(keep_alive)
        model.last_used = time.time()
        return model

    async def unload(self, model_id: str, reason: str = "unload", by: str | None = None, force: bool = False) -> None:
        """Stop a model's runner. A model answering requests is unloaded only with `force`
        (which ends those requests with an error)."""
        model = self._models.get(model_id)
        if model is None:
            raise NotFound(f"{model_id} is not loaded", reason="not_loaded")
        if model.in_flight and not force:
            raise Conflict(
                f"{model_id} is answering {model.in_flight} request(s); try again when it is idle, or force it",
                reason="model_busy",
            )
        del self._models[model_id]
        await model.runner.stop()
        self.on_event(f"model.{reason}", model_id, user=by)

    @contextlib.asynccontextmanager
    async def use(self, model_id: str, keep_alive: float | None = None) -> AsyncIterator[LoadedModel]:
        """Hold a model for one request (loading it if it is local); keeps it from eviction.

        The hold is counted before the load is awaited, so a model cannot be evicted by
        another load between becoming ready and being used."""
        self._holds[model_id] += 1
        try:
            model = await self.load(model_id, keep_alive=keep_alive)
            model.in_flight += 1
        finally:
            self._holds[model_id] -= 1
            if not self._holds[model_id]:
                del self._holds[model_id]
        model.requests += 1
        try:
            yield model
        finally:
            model.in_flight -= 1
            model.last_used = time.time()
            if model.in_flight == 0 and model.keep_alive == 0 and not model.pinned:
                asyncio.ensure_future(self._expire(model))

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap_expired())

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for future in list(self._loading.values()):
            future.cancel()
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(m.runner.stop() for m in models), return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------
    async def _load(self, model_id: str, keep_alive: float | None, by: str | None) -> LoadedModel:
        path, weights, asks_for_code = await asyncio.get_running_loop().run_in_executor(None, self._locate, model_id)
        if path is None:
            raise NotFound(f"model {model_id} is not on this machine; download it first", reason="model_not_found")
        if asks_for_code:
            raise ModelLoadError(
                f"{model_id} ships its own Python code (its config names 'model_file' or 'auto_map'); "
                "running code from a model is not allowed (trust_remote_code stays off)",
                reason="remote_code",
            )
        estimate = int(weights * ESTIMATE_FACTOR) + RUNNER_OVERHEAD_BYTES
        if estimate > self.max_memory_bytes:
            raise ModelLoadError(
                f"{model_id} needs about {estimate / 1024**3:.1f} GiB, more than the whole memory budget "
                f"({self.max_memory_bytes / 1024**3:.1f} GiB, c.MLXManager.max_memory_gb)",
                reason="insufficient_memory",
            )
        async with self._lock:
            await self._make_room(estimate)
            started = time.monotonic()
            try:
                runner = await RunnerProcess.start(model_id, path, self.log, args=self.runner_args)
            except LoadFailed as exc:
                self.on_event(
                    "model.load", model_id, user=by, status="error", error_type="load_failed", detail=str(exc)
                )
                raise ModelLoadError(f"{model_id} could not be loaded: {exc}") from None
            model = LoadedModel(
                model_id, path, runner, estimate, self.default_keep_alive if keep_alive is None else float(keep_alive)
            )
            self._models[model_id] = model
        asyncio.ensure_future(self._watch(model))
        self.log.info("loaded %s in %.1f s (pid %d)", model_id, time.monotonic() - started, runner.pid)
        self.on_event("model.load", model_id, user=by, duration_ms=(time.monotonic() - started) * 1000)
        return model

    def _locate(self, model_id: str) -> tuple[Path | None, int, bool]:
        """The model's folder, weight bytes and whether it ships code (file-system work: runs
        in an executor)."""
        path = self.catalog.resolve(model_id)
        if path is None:
            return None, 0, False
        return path, weights_bytes(path), ships_code(path)

    async def _make_room(self, needed: int) -> None:
        """Evict idle unpinned models, least recently used first, until `needed` fits."""

        def fits() -> bool:
            used = sum(m.memory_bytes for m in self._models.values())
            return len(self._models) < self.max_loaded_models and used + needed <= self.max_memory_bytes

        while not fits():
            idle = [
                m for m in self._models.values() if not m.pinned and not m.in_flight and not self._holds[m.model_id]
            ]
            if not idle:
                raise PoolBusy(
                    "no room to load another model: every loaded model is pinned or busy "
                    f"({len(self._models)} loaded, limit {self.max_loaded_models}); try again later or unload one",
                    headers={"Retry-After": "5"},
                )
            victim = min(idle, key=lambda m: m.last_used)
            self._models.pop(victim.model_id, None)
            await victim.runner.stop()
            self.log.info("evicted %s to make room", victim.model_id)
            self.on_event("model.evict", victim.model_id)

    async def _watch(self, model: LoadedModel) -> None:
        """A runner that exits without being asked is a crash: drop the model at once."""
        code = await model.runner.exited
        if self._models.get(model.model_id) is model:
            del self._models[model.model_id]
            self.log.warning("runner for %s (pid %d) exited with code %s", model.model_id, model.runner.pid, code)
            self.on_event("model.crash", model.model_id, status="error", error_type=f"exit_{code}")

    async def _expire(self, model: LoadedModel) -> None:
        if self._models.get(model.model_id) is model and model.in_flight == 0:
            with contextlib.suppress(NotFound):
                await self.unload(model.model_id, reason="expire")

    async def _reap_expired(self) -> None:
        while True:
            await asyncio.sleep(1)
            now = time.time()
            for model in list(self._models.values()):
                if model.expires_at is not None and model.expires_at <= now:
                    await self._expire(model)
