"""The pool: which models are loaded, in which runner, for how long.

Loads are shared (two loads of one model wait on one runner start). Before spawning, the
memory a model needs is estimated from its weight files; if the model-count limit or the
memory budget would be exceeded, idle unpinned models are unloaded, least recently used
first. Keep-alive follows Ollama: seconds after the last request; negative = forever;
0 = unload as soon as the model is idle. A runner that dies is noticed at once: its model
is dropped from the pool and its requests end with an error.

Models are shared by every user, so the pool itself enforces who may do what (SPEC "Shared
resources"; a handler or a standalone server gets the same rules). `user` is our user dict
(`"username"`, `"is_admin"`, …) or None, the server itself (eviction, expiry), which may do what
an admin may:

- pinning, and a keep-alive longer than `default_keep_alive` or negative (forever), are for
  admins (403 `admin_required`) — from `load()` and from a request's `use()` alike;
- `unload()` refuses (409 `model_busy`) while requests are in flight on the model, and only an
  admin may `force` it (which ends those requests with an error) or unload a pinned model;
- `delete_model()` (admins only) removes a model from disk under the pool's and the downloads'
  locks, so no load or download of it can start half-way through.

Ids that differ only in case are one model (`models.catalog.model_key`): `_models` is keyed by
it, and a loaded model's `model_id` is the id as its folder spells it.
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

from ..errors import BadRequest, Conflict, Forbidden, MLXError, NotFound
from ..models.catalog import (
    ModelCatalog,
    is_admin,
    model_key,
    scrub_paths,
    ships_code,
    username_of,
    validate_model_id,
    weights_bytes,
)
from .runner_process import LoadFailed, RunnerProcess

# Beyond the weights: KV cache, activations and the interpreter (a rough, safe margin).
RUNNER_OVERHEAD_BYTES = 200 * 1024**2
ESTIMATE_FACTOR = 1.2


class PoolBusy(MLXError):
    """Every loaded model is busy or pinned; retrying later may succeed."""

    status_code = 503
    reason = "pool_busy"


class ModelLoadError(MLXError):
    """The model is local but cannot be loaded (bad files, refused code, too big).

    `message` is for admins (it may quote the runner's stderr and the server's paths);
    `public_message` is what other users are told (`for_user()` picks)."""

    status_code = 422
    reason = "load_failed"

    def __init__(self, message: str, reason: str | None = None, public_message: str | None = None):
        super().__init__(message, reason=reason)
        self.public_message = message if public_message is None else public_message

    def for_user(self, user: dict[str, Any] | None) -> ModelLoadError:
        if is_admin(user) or self.public_message == self.message:
            return self
        return ModelLoadError(self.public_message, reason=self.reason)


def _admin_required(what: str) -> Forbidden:
    return Forbidden(f"{what} is for administrators only", reason="admin_required")


def public_load_error(text: str, model_id: str, path: Path | None) -> str:
    """A runner's load failure as a non-admin may read it: no stderr, no server paths."""
    if text.startswith("the runner exited with code"):
        return text.split(" while loading", 1)[0] + " while loading (the server log has the details)"
    return scrub_paths(text, {str(path): model_id} if path is not None else None)


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
    def key(self) -> str:
        return model_key(self.model_id)

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
        runner_stall_seconds: float = 30,
    ):
        self.catalog = catalog
        self.runner_args = list(runner_args or [])  # options for every runner spawned
        self.runner_stall_seconds = runner_stall_seconds
        self.max_memory_bytes = max_memory_bytes
        self.max_loaded_models = max_loaded_models
        self.default_keep_alive = default_keep_alive
        self.log = log
        # on_event(action, model_id, **details) — for the audit trail (load, unload, evict, crash).
        self.on_event = on_event or (lambda *args, **kwargs: None)
        self._models: dict[str, LoadedModel] = {}  # by model_key
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}  # by model_key
        self._loading_ids: dict[str, str] = {}  # model_key → the id the load was asked with
        self._deleting: set[str] = set()  # model_keys being deleted from disk: no load starts
        self._lock = asyncio.Lock()  # serialises admission decisions (eviction + spawn) and deletes
        # Requests per model_key and username (None: the server), from before their load until
        # they end: keeps the model from eviction, and tells who else is using it.
        self._users: dict[str, collections.Counter[str | None]] = {}
        self._reaper: asyncio.Task | None = None

    # -- public API ----------------------------------------------------------------------------
    def get_loaded_model(self, model_id: str) -> LoadedModel | None:
        return self._models.get(model_key(model_id)) if isinstance(model_id, str) else None

    def loaded_models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def is_loading(self, model_id: str) -> bool:
        return model_key(model_id) in self._loading

    def status(self) -> dict[str, Any]:
        return {
            "models": [m.status() for m in self._models.values()],
            "loading": sorted(self._loading_ids[key] for key in self._loading if key in self._loading_ids),
            "limits": {
                "max_memory_bytes": self.max_memory_bytes,
                "max_loaded_models": self.max_loaded_models,
                "default_keep_alive": self.default_keep_alive,
            },
            "memory_used_bytes": sum(m.memory_bytes for m in self._models.values()),
        }

    def check_settings(self, pin: bool | None, keep_alive: float | None, user: dict[str, Any] | None) -> None:
        """400 for a malformed keep-alive; 403 for what only admins may set: a pin, a keep-alive
        longer than `default_keep_alive` or negative (forever)."""
        validate_keep_alive(keep_alive)
        if is_admin(user):
            return
        if pin:
            raise _admin_required("pinning a model")
        if keep_alive is not None:
            default = self.default_keep_alive
            if keep_alive < 0:
                raise _admin_required("keeping a model loaded forever (negative keep_alive)")
            if default >= 0 and keep_alive > default:
                raise _admin_required(
                    f"a keep_alive longer than the server's default ({default:g} s, c.MLXManager.default_keep_alive)"
                )

    async def load(
        self,
        model_id: str,
        pin: bool | None = None,
        keep_alive: float | None = None,
        user: dict[str, Any] | None = None,
    ) -> LoadedModel:
        """Load a local model (or return it if loaded); `pin`/`keep_alive` update its settings
        within what `user` may set (see `check_settings`)."""
        validate_model_id(model_id)
        self.check_settings(pin, keep_alive, user)
        if self._reaper is None:
            self.start()
        key = model_key(model_id)
        model = self._models.get(key)
        if model is not None and not model.runner.serving:
            # Killed as stalled or dying: let its crash be handled (`_watch`), then load it anew.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(model.runner.exited), 10)
            await asyncio.sleep(0)
            if self._models.get(key) is model:
                del self._models[key]
            model = self._models.get(key)
        if model is None:
            future = self._loading.get(key)
            if future is None:
                if key in self._deleting:
                    raise Conflict(f"{model_id} is being deleted from disk", reason="model_deleting")
                future = self._loading[key] = asyncio.ensure_future(self._load(model_id, keep_alive, user))
                self._loading_ids[key] = model_id

                def forget(done: asyncio.Future, key: str = key) -> None:
                    if self._loading.get(key) is done:
                        del self._loading[key]
                        self._loading_ids.pop(key, None)

                future.add_done_callback(forget)
            try:
                model = await asyncio.shield(future)
            except ModelLoadError as exc:  # shared by every waiter: each is told what it may see
                raise exc.for_user(user) from None
        if pin is not None and not pin and model.pinned and not is_admin(user):
            raise _admin_required("unpinning a model")
        if pin is not None:
            model.pinned = bool(pin)
        if keep_alive is not None:
            model.keep_alive = float(keep_alive)
        model.last_used = time.time()
        return model

    def others_using(self, model_id: str, user: dict[str, Any] | None) -> int:
        """Requests in flight on (or waiting for) the model from anyone but `user` (for the
        server itself, every request)."""
        users = self._users.get(model_key(model_id)) or {}
        me = (username_of(user) or "").lower()
        return sum(n for name, n in users.items() if user is None or name is None or name.lower() != me)

    async def unload(
        self, model_id: str, reason: str = "unload", user: dict[str, Any] | None = None, force: bool = False
    ) -> None:
        """Stop a model's runner. A model answering requests is unloaded only with `force`
        (which ends those requests with an error); `force` and pinned models are for admins."""
        admin = is_admin(user)
        if force and not admin:
            raise _admin_required("force-unloading a model")
        model = self._models.get(model_key(model_id)) if isinstance(model_id, str) else None
        if model is None:
            raise NotFound(f"{model_id} is not loaded", reason="not_loaded")
        if model.pinned and not admin:
            raise _admin_required(f"unloading {model.model_id}, which an administrator pinned,")
        users = self._users.get(model.key)
        busy = sum(users.values()) if users else 0
        if busy and not force:
            others = self.others_using(model.model_id, user)
            whose = f"{others} of them for other users" if others else "all of them yours"
            raise Conflict(
                f"{model.model_id} is answering {busy} request(s) ({whose}); try again when it is idle"
                + (", or force it" if admin else ""),
                reason="model_busy",
            )
        del self._models[model.key]
        await model.runner.stop()
        self.on_event(f"model.{reason}", model.model_id, user=username_of(user))

    @contextlib.asynccontextmanager
    async def use(
        self, model_id: str, keep_alive: float | None = None, user: dict[str, Any] | None = None
    ) -> AsyncIterator[LoadedModel]:
        """Hold a model for one request of `user` (loading it if it is local); keeps it from
        eviction, and from being unloaded without `force`. The request's `keep_alive` is
        checked like a load's (403 for what only admins may set).

        The hold is counted before the load is awaited, so a model cannot be evicted by
        another load between becoming ready and being used."""
        validate_model_id(model_id)
        key, name = model_key(model_id), username_of(user)
        self._users.setdefault(key, collections.Counter())[name] += 1
        try:
            model = await self.load(model_id, keep_alive=keep_alive, user=user)
        except BaseException:
            self._release(key, name)
            raise
        model.in_flight += 1
        model.requests += 1
        try:
            yield model
        finally:
            model.in_flight -= 1
            self._release(key, name)
            model.last_used = time.time()
            if model.in_flight == 0 and model.keep_alive == 0 and not model.pinned:
                asyncio.ensure_future(self._expire(model))

    async def delete_model(
        self, model_id: str, user: dict[str, Any] | None = None, force: bool = False, downloads=None
    ) -> dict[str, Any]:
        """Remove a local model from disk (admins only): `{"id", "deleted", "freed_bytes"}`, the
        id as its folder spelt it. `downloads` is the `DownloadManager` (None: no downloads).

        Under the download manager's lock and the pool's, it checks that the model is not being
        downloaded, loaded or (unless `force`, which unloads it first) loaded, and marks it
        being deleted: a load or download of it that starts before the files are gone is
        refused (409 `model_deleting`), one already in its admission waits for it first."""
        if not is_admin(user):
            raise _admin_required("deleting a model from disk")
        validate_model_id(model_id)
        key = model_key(model_id)
        if downloads is not None:
            await downloads.ready()
        async with contextlib.AsyncExitStack() as stack:
            if downloads is not None:
                await stack.enter_async_context(downloads.lock)
            await stack.enter_async_context(self._lock)
            if key in self._deleting:
                raise Conflict(f"{model_id} is already being deleted", reason="model_deleting")
            if downloads is not None and downloads.active_for(model_id) is not None:
                raise Conflict(
                    f"{model_id} is being downloaded; cancel the download first", reason="download_in_progress"
                )
            if key in self._loading:
                raise Conflict(f"{model_id} is being loaded; try again when it is loaded", reason="model_loading")
            model = self._models.get(key)
            if model is not None and not force:
                raise Conflict(f"{model_id} is loaded; unload it first or delete with force", reason="model_loaded")
            if model is not None:
                await self.unload(model.model_id, user=user, force=True)
            self._deleting.add(key)
            if downloads is not None:
                downloads.deleting.add(key)

        def delete() -> dict[str, Any]:
            canonical = self.catalog.canonical_id(model_id) or model_id
            return {"id": canonical, "deleted": True, "freed_bytes": self.catalog.delete(model_id)}

        try:
            return await asyncio.get_running_loop().run_in_executor(None, delete)
        finally:
            self._deleting.discard(key)
            if downloads is not None:
                downloads.deleting.discard(key)

    def _release(self, key: str, name: str | None) -> None:
        users = self._users.get(key)
        if users is None:
            return
        users[name] -= 1
        if users[name] <= 0:
            del users[name]
        if not users:
            del self._users[key]

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
    async def _load(self, model_id: str, keep_alive: float | None, user: dict[str, Any] | None) -> LoadedModel:
        by = username_of(user)
        model_id, path, weights, asks_for_code = await asyncio.get_running_loop().run_in_executor(
            None, self._locate, model_id
        )
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
                runner = await RunnerProcess.start(
                    model_id, path, self.log, args=self.runner_args, stall_seconds=self.runner_stall_seconds
                )
            except LoadFailed as exc:
                self.on_event(
                    "model.load", model_id, user=by, status="error", error_type="load_failed", detail=str(exc)
                )
                raise ModelLoadError(
                    f"{model_id} could not be loaded: {exc}",
                    public_message=f"{model_id} could not be loaded: {public_load_error(str(exc), model_id, path)}",
                ) from None
            model = LoadedModel(
                model_id, path, runner, estimate, self.default_keep_alive if keep_alive is None else float(keep_alive)
            )
            self._models[model.key] = model
        asyncio.ensure_future(self._watch(model))
        self.log.info("loaded %s in %.1f s (pid %d)", model_id, time.monotonic() - started, runner.pid)
        self.on_event("model.load", model_id, user=by, duration_ms=(time.monotonic() - started) * 1000)
        return model

    def _locate(self, model_id: str) -> tuple[str, Path | None, int, bool]:
        """The model's id as its folder spells it, its folder, weight bytes and whether it
        ships code (file-system work: runs in an executor)."""
        found = self.catalog.locate(model_id)
        if found is None:
            return model_id, None, 0, False
        model_id, path = found
        return model_id, path, weights_bytes(path), ships_code(path)

    async def _make_room(self, needed: int) -> None:
        """Evict idle unpinned models, least recently used first, until `needed` fits."""

        def fits() -> bool:
            used = sum(m.memory_bytes for m in self._models.values())
            return len(self._models) < self.max_loaded_models and used + needed <= self.max_memory_bytes

        while not fits():
            idle = [m for m in self._models.values() if not m.pinned and not m.in_flight and not self._users.get(m.key)]
            if not idle:
                raise PoolBusy(
                    "no room to load another model: every loaded model is pinned or busy "
                    f"({len(self._models)} loaded, limit {self.max_loaded_models}); try again later or unload one",
                    headers={"Retry-After": "5"},
                )
            victim = min(idle, key=lambda m: m.last_used)
            self._models.pop(victim.key, None)
            await victim.runner.stop()
            self.log.info("evicted %s to make room", victim.model_id)
            self.on_event("model.evict", victim.model_id)

    async def _watch(self, model: LoadedModel) -> None:
        """A runner that exits without being asked is a crash: drop the model at once."""
        code = await model.runner.exited
        if self._models.get(model.key) is model:
            del self._models[model.key]
            self.log.warning("runner for %s (pid %d) exited with code %s", model.model_id, model.runner.pid, code)
            self.on_event("model.crash", model.model_id, status="error", error_type=f"exit_{code}")

    async def _expire(self, model: LoadedModel) -> None:
        if self._models.get(model.key) is model and model.in_flight == 0 and not self._users.get(model.key):
            with contextlib.suppress(NotFound, Conflict):
                await self.unload(model.model_id, reason="expire")

    async def _reap_expired(self) -> None:
        while True:
            await asyncio.sleep(1)
            now = time.time()
            for model in list(self._models.values()):
                if model.expires_at is not None and model.expires_at <= now:
                    await self._expire(model)
