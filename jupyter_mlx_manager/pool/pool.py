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

Memory (SPEC "Limits"). A loaded model counts

    memory_bytes = base + kv_bytes + prompt_cache_bytes

where `base` is the larger of the estimate made before spawning (weights × ESTIMATE_FACTOR +
the runner overhead) and the runner's RSS when its model became ready (interpreter,
libraries, weights), and `kv_bytes` (the running requests' KV caches) and
`prompt_cache_bytes` come from the runner's heartbeat, measured from the cache arrays'
`nbytes`. The RSS of later heartbeats is reported (`rss_bytes`) but not added: on Linux it
already holds the KV and prompt caches (adding both would count them twice), and on Apple
unified memory MLX's Metal buffers are not all in RSS, so the arrays' own sizes are the one
measure that means the same on both. The runner overhead in estimates is learned: the
largest seen so far (a spare's RSS, a runner's base minus its weights), at least
RUNNER_OVERHEAD_BYTES.

The budget holds the sum of these. Before spawning, room is made for the estimate: first by
trimming prompt caches (`trim_cache`: least recently used models first, each runner's cache
capped at what it keeps), then by evicting idle unpinned models. Once ready, a model whose
base turned out larger than its estimate gets room the same way, or is unloaded again (503
`pool_busy`) — the pool is never over budget by a model. While running, the reaper (every
second) trims prompt caches when live KV pushes the sum over the budget, and gives trimmed
runners back room (up to `prompt_cache_bytes`, their configured size) when there is some;
a runner starts with its cache capped at what the budget leaves. Live KV itself is never cut:
requests run to their end.

Warm spare (`warm_runner`): the pool keeps one runner process that has imported MLX and
mlx-lm and waits for a model; `load()` hands it the model (a load then costs about reading the
weights) and starts the next spare in the background. The spare is not a loaded model: it is
not in `models`, not in the budget or `max_loaded_models`; `status()["spare"]` shows it. It is
stopped at shutdown and, like every runner, exits with the server (stdin EOF, PR_SET_PDEATHSIG).

Speculative decoding (SPEC "Speculative decoding"): a model loads with a draft model (a local
text model sharing its tokenizer, loaded in the same runner: its weights count in the model's
estimate and base), with prompt lookup, or without — as `load(draft_model=…)` or
`load(speculative="prompt_lookup")` asks, else as `c.MLXManager.draft_models` (or a profile's
`draft_model`, through `draft_for`) says. A draft is checked before anything is spawned: a
`load()` that names a bad one is a 400 on `draft_model`; a configured one that is bad is logged
and the model loads without it. A runner has one draft for everyone: a load that asks for
another one than the loaded model's is 409 `model_loaded` (unload it first).
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

from ..auth.users import is_admin, username_of
from ..errors import BadRequest, Conflict, Forbidden, InvalidParam, MLXError, NotFound, scrub_paths
from ..models.catalog import ModelCatalog
from ..models.ids import is_draft_id, model_key, validate_model_id
from ..models.inspection import adapter_base, load_problem, read_json, ships_code, weights_bytes
from ..models.kinds import GENERATIVE_KINDS, check_kind, model_kind
from ..runner.disk_cache import folder_bytes
from .runner_process import LoadFailed, RunnerProcess

# Beyond the weights: activations and the interpreter (a rough, safe margin; the pool learns
# a larger one from the runners it sees). KV and prompt caches are counted as measured.
RUNNER_OVERHEAD_BYTES = 200 * 1024**2
ESTIMATE_FACTOR = 1.2
DEFAULT_PROMPT_CACHE_BYTES = 1 << 30  # the runner's own default
CACHE_RAISE_STEP_BYTES = 1 << 20  # give a trimmed prompt cache room back only in steps at least this big


def _runner_option(runner_args: list[str], name: str) -> str | None:
    """`name VALUE` or `name=VALUE` from the runner options (the last one wins, as in argparse)."""
    value = None
    for i, arg in enumerate(runner_args):
        if arg == name and i + 1 < len(runner_args):
            value = runner_args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _prompt_cache_option(runner_args: list[str]) -> int:
    """`--prompt-cache-bytes N` from the runner options."""
    value = DEFAULT_PROMPT_CACHE_BYTES
    with contextlib.suppress(ValueError, TypeError):
        value = int(_runner_option(runner_args, "--prompt-cache-bytes") or value)
    return max(0, value)


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


def tokenizer_mapping(folder: Path) -> Any:
    """What a model's tokenizer maps between tokens and ids: tokenizer.json's vocabulary and
    added tokens, or a SentencePiece tokenizer.model's bytes; None when there is neither (an
    adapter's is its base model's)."""
    base = adapter_base(folder)
    folder = Path(base["base_path"]) if base else folder
    data = read_json(folder / "tokenizer.json")
    if data:
        added = [(t.get("id"), t.get("content")) for t in data.get("added_tokens") or [] if isinstance(t, dict)]
        return (data.get("model") or {}).get("vocab"), sorted(added, key=str)
    sentencepiece = folder / "tokenizer.model"
    return sentencepiece.read_bytes() if sentencepiece.is_file() else None


def token_rows(folder: Path) -> int | None:
    """The embedding rows a model's config declares (`vocab_size`), if it does."""
    config = read_json(folder / "config.json")
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return rows if isinstance(rows, int) else None


@dataclass(frozen=True)
class Speculation:
    """How a model's runner speculates: with a draft model (`draft_id`, its folder and weight
    bytes) or with prompt lookup (`draft_id` None)."""

    mode: str  # "draft_model" or "prompt_lookup"
    draft_id: str | None = None
    draft_path: Path | None = None
    draft_weights: int = 0

    def runner_args(self) -> list[str]:
        return ["--draft-model", str(self.draft_path)] if self.draft_path else ["--speculative", self.mode]

    def load_options(self) -> dict[str, str]:
        """What a spare runner's `load` command carries instead of `runner_args`."""
        return {"draft_path": str(self.draft_path)} if self.draft_path else {"speculative": self.mode}

    def same_as(self, asked: tuple[str, str | None]) -> bool:
        mode, draft_id = asked
        return (
            mode == self.mode
            and (draft_id is None) == (self.draft_id is None)
            and (draft_id is None or model_key(draft_id) == model_key(self.draft_id))
        )

    def describe(self) -> str:
        return f"with draft model {self.draft_id}" if self.draft_id else f"with {self.mode} speculation"


def asked_speculation(draft_model: Any, speculative: Any) -> tuple[str, str | None] | None:
    """What a load asks for (`draft_model`: a model id, or `speculative: "prompt_lookup"`), as
    (mode, draft id); None when it asks for nothing (the configured speculation applies)."""
    if draft_model is not None and speculative is not None:
        raise InvalidParam("give draft_model or speculative, not both", "speculative")
    if speculative is not None and speculative != "prompt_lookup":
        raise InvalidParam('speculative must be "prompt_lookup" (or give draft_model)', "speculative")
    if draft_model is not None and not is_draft_id(draft_model):
        raise InvalidParam("draft_model must be the id of a local text model", "draft_model")
    if draft_model is not None:
        return "draft_model", draft_model
    return ("prompt_lookup", None) if speculative else None


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
    cache_limit: int = 0  # the prompt-cache cap last given to the runner
    kind: str = "text"  # models.catalog.model_kind: which runner program serves it
    speculation: Speculation | None = None

    @property
    def key(self) -> str:
        return model_key(self.model_id)

    @property
    def base_bytes(self) -> int:
        """The estimate, or the runner's RSS at ready if larger (see the module docstring)."""
        return max(self.estimate_bytes, self.runner.base_bytes)

    @property
    def memory_bytes(self) -> int:
        """What the budget counts: base + live KV + prompt cache (see the module docstring)."""
        return self.base_bytes + self.runner.kv_bytes + self.runner.prompt_cache_bytes

    @property
    def expires_at(self) -> float | None:
        if self.pinned or self.keep_alive < 0 or self.in_flight:
            return None
        return self.last_used + self.keep_alive

    @property
    def context_length(self) -> int | None:
        """Tokens of prompt + output, as the runner enforces them; None for models without one
        (speech-to-text and text-to-speech work in seconds of audio)."""
        value = self.runner.info.get("context_length")
        return int(value) if value else None

    def status(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "kind": self.kind,
            "status": "busy" if self.in_flight else "loaded",
            "pinned": self.pinned,
            "keep_alive": self.keep_alive,
            "expires_at": _iso(self.expires_at),
            "memory_bytes": self.memory_bytes,
            "base_bytes": self.base_bytes,
            "kv_bytes": self.runner.kv_bytes,
            "prompt_cache_bytes": self.runner.prompt_cache_bytes,
            "prompt_cache_limit_bytes": self.cache_limit,
            "rss_bytes": self.runner.heartbeat.get("rss_bytes"),
            "mlx_active_bytes": self.runner.heartbeat.get("mlx_active_bytes"),
            "mlx_peak_bytes": self.runner.heartbeat.get("mlx_peak_bytes"),
            "pid": self.runner.pid,
            "loaded_at": _iso(self.loaded_at),
            "last_used": _iso(self.last_used),
            "requests": self.requests,
            "in_flight": self.in_flight,
            "context_length": self.context_length,
            "tool_calling": bool(self.runner.info.get("tool_calling")),
            "draft_model": self.speculation.draft_id if self.speculation else None,
            "speculative": self.speculative_status(),
        }

    def speculative_status(self) -> dict[str, Any] | None:
        """Draft tokens accepted and rejected by this runner (draft model or prompt lookup; a
        runner with a draft model counts its per-request prompt lookups in the same totals), and
        the acceptance rate; None when it neither was loaded to speculate nor has speculated for a
        request that asked to (`speculative: "prompt_lookup"` in its body)."""
        engine = self.runner.heartbeat.get("engine") or {}
        accepted, rejected = engine.get("speculative_accepted", 0), engine.get("speculative_rejected", 0)
        total = accepted + rejected
        if self.speculation is None and not total:
            return None
        return {
            "mode": self.speculation.mode if self.speculation else "prompt_lookup",  # else: per request
            "draft_model": self.speculation.draft_id if self.speculation else None,
            "accepted_tokens": accepted, "rejected_tokens": rejected,
            "acceptance_rate": accepted / total if total else None,
        }  # fmt: skip


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
        warm_runner: bool = False,
        prompt_cache_bytes: int | None = None,
        draft_models: dict[str, str] | None = None,
        draft_for=None,
    ):
        self.catalog = catalog
        self.runner_args = list(runner_args or [])  # options for every runner spawned
        self.runner_stall_seconds = runner_stall_seconds
        self.warm_runner = warm_runner
        # Each runner's prompt-cache size (its cap when memory allows); default: from runner_args.
        self.prompt_cache_bytes = (
            _prompt_cache_option(self.runner_args) if prompt_cache_bytes is None else max(0, int(prompt_cache_bytes))
        )
        # The runners' prompt cache on disk (`--prompt-cache-dir`): its size is in the status.
        disk_dir = _runner_option(self.runner_args, "--prompt-cache-dir")
        self.prompt_cache_dir = Path(disk_dir) if disk_dir else None
        # Speculative decoding per model id (`c.MLXManager.draft_models`, lower-case ids): a draft
        # model's id or "prompt_lookup"; then `draft_for(model_id)` (the profiles') if given.
        self.draft_models = {k.lower(): v for k, v in (draft_models or {}).items()}
        self.draft_for = draft_for or (lambda model_id: None)
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
        self._spare: RunnerProcess | None = None  # the warm spare runner (not a loaded model)
        self._spare_task: asyncio.Task | None = None  # spawning the next spare
        self._tasks: set[asyncio.Task] = set()  # background work, kept referenced, failures logged
        self._overhead = RUNNER_OVERHEAD_BYTES  # learned: see _learn_overhead
        self._reserved: dict[str, int] = {}  # jobs' memory, by job (see reserve)
        self._closed = False

    # -- public API ----------------------------------------------------------------------------
    def get_loaded_model(self, model_id: str) -> LoadedModel | None:
        return self._models.get(model_key(model_id)) if isinstance(model_id, str) else None

    def loaded_models(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def spare(self) -> RunnerProcess | None:
        """The warm spare runner, if there is one now."""
        return self._spare if self._spare is not None and self._spare.alive else None

    def memory_used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._models.values()) + sum(self._reserved.values())

    async def reserve(self, name: str, nbytes: int) -> None:
        """Count `nbytes` of other work (a job's child process: fine-tune, evaluate, convert) in
        the memory budget, making room for it as for a load (prompt caches trimmed, idle models
        evicted); PoolBusy when it cannot fit now, a 400 when it never could."""
        self._check_budget(name, nbytes)
        async with self._lock:
            await self._make_room(nbytes, slot=False)
            self._reserved[name] = nbytes

    def release(self, name: str) -> None:
        """The end of what `reserve` counted."""
        self._reserved.pop(name, None)

    def status(self) -> dict[str, Any]:
        spare = self.spare
        return {
            "models": [m.status() for m in self._models.values()],
            "spare": None
            if spare is None
            else {"pid": spare.pid, "ready": spare.spare.done(), "rss_bytes": spare.heartbeat.get("rss_bytes")},
            "loading": sorted(self._loading_ids[key] for key in self._loading if key in self._loading_ids),
            "limits": {
                "max_memory_bytes": self.max_memory_bytes,
                "max_loaded_models": self.max_loaded_models,
                "default_keep_alive": self.default_keep_alive,
                "runner_overhead_bytes": self._runner_overhead(),
            },
            "memory_used_bytes": self.memory_used_bytes(),
            "prompt_cache_disk_bytes": folder_bytes(self.prompt_cache_dir) if self.prompt_cache_dir else 0,
            "jobs": [{"job": name, "memory_bytes": n} for name, n in self._reserved.items()],
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
        draft_model: str | None = None,
        speculative: str | None = None,
    ) -> LoadedModel:
        """Load a local model (or return it if loaded); `pin`/`keep_alive` update its settings
        within what `user` may set (see `check_settings`). `draft_model` or `speculative` ask
        for its speculative decoding (see the module docstring)."""
        validate_model_id(model_id)
        asked = asked_speculation(draft_model, speculative)
        self.check_settings(pin, keep_alive, user)
        if self._closed:
            raise PoolBusy("the server is shutting down", headers={"Retry-After": "5"})
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
                future = self._loading[key] = asyncio.ensure_future(self._load(model_id, keep_alive, user, asked))
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
        if asked is not None and (model.speculation is None or not model.speculation.same_as(asked)):
            now = model.speculation.describe() if model.speculation else "without speculative decoding"
            wanted = Speculation(*asked).describe()
            raise Conflict(
                f"{model.model_id} is loaded {now}; unload it first to load it {wanted}", reason="model_loaded"
            )
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
        self,
        model_id: str,
        keep_alive: float | None = None,
        user: dict[str, Any] | None = None,
        kinds: tuple[str, ...] = GENERATIVE_KINDS,
    ) -> AsyncIterator[LoadedModel]:
        """Hold a model for one request of `user` (loading it if it is local); keeps it from
        eviction, and from being unloaded without `force`. The request's `keep_alive` is
        checked like a load's (403 for what only admins may set). A model of another kind than
        `kinds` (the endpoint's) is refused before anything loads (400, param `model`).

        The hold is counted before the load is awaited, so a model cannot be evicted by
        another load between becoming ready and being used."""
        validate_model_id(model_id)
        loaded = self.get_loaded_model(model_id)
        loop = asyncio.get_running_loop()
        kind = loaded.kind if loaded else await loop.run_in_executor(None, self.catalog.kind, model_id)
        if kind is not None:
            check_kind(model_id, kind, kinds)
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
                self._background(self._expire(model), "expiring a model")

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
        """Start the keep-alive reaper and (with `warm_runner`) the spare; idempotent. Call it on
        the event loop (the first `load()` does, if nobody did)."""
        if self._closed:
            return
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap_expired())
        self._ensure_spare()

    async def shutdown(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._spare_task is not None and not self._spare_task.done():
            # Not cancelled (a process could be left half-made): it stops its spare itself.
            await asyncio.wait([self._spare_task], timeout=30)
        for future in list(self._loading.values()):
            future.cancel()
        models, self._models = list(self._models.values()), {}
        spare, self._spare = self._spare, None
        runners = [m.runner for m in models] + ([spare] if spare is not None else [])
        await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    # -- internals -----------------------------------------------------------------------------
    async def _load(
        self,
        model_id: str,
        keep_alive: float | None,
        user: dict[str, Any] | None,
        asked: tuple[str, str | None] | None = None,
    ) -> LoadedModel:
        by = username_of(user)
        loop = asyncio.get_running_loop()
        model_id, path, weights, asks_for_code, problem = await loop.run_in_executor(None, self._locate, model_id)
        if path is None:
            raise NotFound(f"model {model_id} is not on this machine; download it first", reason="model_not_found")
        if asks_for_code:
            raise ModelLoadError(
                f"{model_id} ships its own Python code (its config names 'model_file' or 'auto_map'); "
                "running code from a model is not allowed (trust_remote_code stays off)",
                reason="remote_code",
            )
        kind = await loop.run_in_executor(None, self.catalog.kind, model_id)
        check_kind(model_id, kind or "text")  # its package may be missing (a wheel extra)
        configured = asked is None
        if configured:  # read here, on the loop, where the profiles change
            asked = self._configured_speculation(model_id)
        speculation = None
        if asked is not None:
            speculation = await loop.run_in_executor(
                None, self._speculation, model_id, path, kind or "text", asked, configured
            )
        if problem:  # what the runner would refuse: no process is spawned (or spare spent) for it
            self.on_event("model.load", model_id, user=by, status="error", error_type="load_failed", detail=problem)
            raise ModelLoadError(
                f"{model_id} could not be loaded: {problem}",
                public_message=f"{model_id} could not be loaded: {public_load_error(problem, model_id, path)}",
            )
        weights += speculation.draft_weights if speculation else 0  # the draft's weights are in the runner
        estimate = self.estimate_bytes(weights)
        self._check_budget(
            model_id + (f" with draft {speculation.draft_id}" if speculation and speculation.draft_id else ""), estimate
        )
        async with self._lock:
            await self._make_room(estimate)
            started = time.monotonic()
            try:
                runner = await self._start_runner(model_id, path, kind or "text", speculation)
            except LoadFailed as exc:
                self.on_event(
                    "model.load", model_id, user=by, status="error", error_type="load_failed", detail=str(exc)
                )
                raise ModelLoadError(
                    f"{model_id} could not be loaded: {exc}",
                    public_message=f"{model_id} could not be loaded: {public_load_error(str(exc), model_id, path)}",
                ) from None
            model = LoadedModel(
                model_id, path, runner, estimate, self.default_keep_alive if keep_alive is None else float(keep_alive),
                kind=kind or "text", speculation=speculation,
            )  # fmt: skip
            model.cache_limit = self.prompt_cache_bytes
            self._learn_overhead(runner.base_bytes - int(weights * ESTIMATE_FACTOR))
            self._models[model.key] = model
            try:
                await self._settle_new(model)
            except BaseException:
                if self._models.get(model.key) is model:
                    del self._models[model.key]
                await runner.stop()
                raise
        self._background(self._watch(model), f"watching the runner of {model_id}")
        self.log.info("loaded %s in %.1f s (pid %d)", model_id, time.monotonic() - started, runner.pid)
        self.on_event("model.load", model_id, user=by, duration_ms=(time.monotonic() - started) * 1000)
        return model

    def _configured_speculation(self, model_id: str) -> tuple[str, str | None] | None:
        """(mode, draft id) that `draft_models` or a profile (`draft_for`) sets for the model, or None."""
        draft = (
            self.draft_models.get(model_id.lower())
            or self.draft_models.get(f"local/{model_id}".lower())
            or self.draft_for(model_id)
        )
        if not draft:
            return None
        return ("prompt_lookup", None) if draft == "prompt_lookup" else ("draft_model", draft)

    def _speculation(
        self, model_id: str, path: Path, kind: str, asked: tuple[str, str | None], configured: bool
    ) -> Speculation | None:
        """How the model will speculate: as the load asks (a bad draft: 400 on `draft_model`), or as
        `configured` (a bad draft: logged, none). File-system work: runs in an executor."""
        mode, draft_id = asked
        try:
            if kind != "text":
                raise InvalidParam(
                    f"{model_id} is not a text model ({kind}): speculative decoding is for text models",
                    "draft_model" if draft_id else "speculative",
                )
            return self._check_draft(model_id, path, draft_id) if draft_id else Speculation(mode)
        except InvalidParam as exc:
            if not configured:
                raise
            self.log.warning("%s loads without speculative decoding: the configured %s", model_id, exc)
            return None

    def _check_draft(self, model_id: str, path: Path, draft_id: str) -> Speculation:
        """A draft model for `model_id` (folder `path`): a local text model folder that shares
        its tokenizer (the same tokens for the same ids) and has no more token rows than it;
        a 400 on `draft_model` saying what is wrong otherwise."""

        def refused(why: str) -> InvalidParam:
            return InvalidParam(f"draft_model {draft_id} {why}", "draft_model")

        found = self._locate(draft_id) if is_draft_id(draft_id) else None
        if found is None or found[1] is None:
            raise refused("is not a model on this machine (a draft model must be local)")
        draft_id, draft_path, draft_weights, asks_for_code, problem = found
        kind = model_kind(draft_path)
        if adapter_base(draft_path) is not None or kind != "text":
            raise refused(
                "is an adapter: a draft must be a model folder" if kind == "text" else f"is not a text model ({kind})"
            )
        if asks_for_code:
            raise refused("ships its own Python code; running code from a model is not allowed")
        if problem:
            raise refused(f"cannot be loaded: {public_load_error(problem, draft_id, draft_path)}")
        vocabulary = tokenizer_mapping(draft_path)
        if vocabulary is None or vocabulary != tokenizer_mapping(path):
            raise refused(f"does not share {model_id}'s tokenizer (its vocabulary differs)")
        rows, model_rows = token_rows(draft_path), token_rows(path)
        if rows and model_rows and rows > model_rows:
            raise refused(f"has {rows} token rows, more than {model_id}'s {model_rows}")
        return Speculation("draft_model", draft_id, draft_path, draft_weights)

    async def _start_runner(
        self, model_id: str, path: Path, kind: str = "text", speculation: Speculation | None = None
    ) -> RunnerProcess:
        """The spare, handed this model (and its speculation), if there is one (a spare has
        imported mlx-lm: text models only); else a new runner for the model's kind. The next
        spare is started afterwards, in the background."""
        if kind != "text":
            return await RunnerProcess.start(
                model_id, path, self.log, args=[*self.runner_args, "--kind", kind],
                stall_seconds=self.runner_stall_seconds,
            )  # fmt: skip
        spare = self._take_spare()
        try:
            if spare is not None:
                return await spare.load(model_id, path, options=speculation.load_options() if speculation else None)
            extra = speculation.runner_args() if speculation else []
            return await RunnerProcess.start(
                model_id, path, self.log, args=[*self.runner_args, *extra], stall_seconds=self.runner_stall_seconds
            )
        finally:
            self._ensure_spare()

    async def _settle_new(self, model: LoadedModel) -> None:
        """A model just ready: its base may exceed its estimate. Make room for it (prompt caches,
        then idle models), else refuse it (PoolBusy); then cap its prompt cache at what the
        budget leaves."""
        self._check_budget(model.model_id, model.base_bytes, "takes {:.2f} GiB once loaded")
        if self.memory_used_bytes() > self.max_memory_bytes:
            await self._make_room(0, exclude=model)
        free = self.max_memory_bytes - self.memory_used_bytes()
        share = max(0, min(self.prompt_cache_bytes, free))
        if share < self.prompt_cache_bytes and self.prompt_cache_bytes:
            model.cache_limit = share
            await model.runner.trim_cache(share)

    def _check_budget(self, what: str, nbytes: int, needs: str = "needs about {:.1f} GiB") -> None:
        """A load (or a job) that could never fit the whole memory budget: 422 insufficient_memory."""
        if nbytes > self.max_memory_bytes:
            raise ModelLoadError(
                f"{what} {needs.format(nbytes / 1024**3)}, more than the whole memory budget "
                f"({self.max_memory_bytes / 1024**3:.1f} GiB, c.MLXManager.max_memory_gb)",
                reason="insufficient_memory",
            )

    def _take_spare(self) -> RunnerProcess | None:
        spare = self.spare if self.warm_runner else None
        if spare is not None:
            self._spare = None
        return spare

    def _ensure_spare(self) -> None:
        """Start spawning a spare unless there is one (or one is being spawned)."""
        if not self.warm_runner or self._closed or self.spare is not None:
            return
        if self._spare_task is not None and not self._spare_task.done():
            return
        self._spare_task = self._background(self._spawn_spare(), "starting a spare runner")

    async def _spawn_spare(self) -> None:
        runner = await RunnerProcess.spawn(self.log, None, self.runner_args, self.runner_stall_seconds)
        if self._closed:
            await runner.stop()
            return
        self._spare = runner
        self._background(self._watch_spare(runner), "watching the spare runner")

    async def _watch_spare(self, runner: RunnerProcess) -> None:
        await asyncio.wait([runner.spare, runner.exited], return_when=asyncio.FIRST_COMPLETED)
        if runner.spare.done():  # its imports are done: what a runner costs before any model
            self._learn_overhead(int(runner.spare.result().get("rss_bytes") or 0))
        code = await runner.exited
        if self._spare is runner:  # not handed a model: it died (the next load spawns a new one)
            self._spare = None
            if not self._closed:
                self.log.warning("the spare runner (pid %d) exited with code %s", runner.pid, code)

    def _learn_overhead(self, observed: int) -> None:
        self._overhead = max(self._overhead, observed)

    def _runner_overhead(self) -> int:
        return self._overhead

    def estimate_bytes(self, weights: int) -> int:
        """What a model of `weights` bytes is counted as before its runner is ready: the sidebar
        shows it before Load, the load makes room for it."""
        return int(weights * ESTIMATE_FACTOR) + self._runner_overhead()

    def _background(self, coroutine, what: str) -> asyncio.Task:
        """Run `coroutine` as a task kept referenced until it ends; its failure is logged."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.log.error("pool: %s failed", what, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    def _locate(self, model_id: str) -> tuple[str, Path | None, int, bool, str | None]:
        """The model's id as its folder spells it, its folder, weight bytes, whether it ships
        code, and why the runner would refuse it (file-system work: runs in an executor)."""
        found = self.catalog.locate(model_id)
        if found is None:
            return model_id, None, 0, False, None
        model_id, path = found
        return model_id, path, weights_bytes(path), ships_code(path), load_problem(path)

    async def _make_room(self, needed: int, exclude: LoadedModel | None = None, slot: bool = True) -> None:
        """Make `needed` bytes (and, unless `exclude` is the model being made room for or `slot`
        is False, a model slot) fit: trim prompt caches first, then evict idle unpinned models,
        least recently used first."""
        wants_slot = slot and exclude is None

        def fits() -> bool:
            slots = (
                len(self._models) < self.max_loaded_models
                if wants_slot
                else len(self._models) <= self.max_loaded_models
            )
            return slots and self.memory_used_bytes() + needed <= self.max_memory_bytes

        trimmed = False
        while not fits():
            slots_ok = len(self._models) < self.max_loaded_models or not wants_slot
            if not trimmed and slots_ok and any(m.runner.prompt_cache_bytes for m in self._models.values()):
                trimmed = True
                await self._fit_prompt_caches(needed)
                continue
            idle = [
                m
                for m in self._models.values()
                if m is not exclude and not m.pinned and not m.in_flight and not self._users.get(m.key)
            ]
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

    async def _fit_prompt_caches(self, needed: int = 0) -> None:
        """Keep the budget with the prompt caches: over it (with `needed` more bytes), cap the
        caches, least recently used model first, at what they may keep (`trim_cache`) and wait
        for the runners' answers; under it, give capped caches room back, up to their
        configured size, in steps of at least CACHE_RAISE_STEP_BYTES — only to caches that have
        filled their cap, so the caps grow as the caches do, never far past the budget."""
        models = sorted((m for m in self._models.values() if m.runner.serving), key=lambda m: m.last_used)
        excess = self.memory_used_bytes() + needed - self.max_memory_bytes
        if excess > 0:
            trims = []
            for model in models:
                held = model.runner.prompt_cache_bytes
                if excess <= 0:
                    break
                if held <= 0:
                    continue
                cut = min(held, excess)
                model.cache_limit = held - cut
                excess -= cut
                trims.append(model.runner.trim_cache(model.cache_limit))
            if trims:
                await asyncio.gather(*trims, return_exceptions=True)
            return
        free = -excess
        capped = [
            m
            for m in models
            if m.cache_limit < self.prompt_cache_bytes
            and m.runner.prompt_cache_bytes >= m.cache_limit - CACHE_RAISE_STEP_BYTES
        ]
        for model in capped:
            limit = min(self.prompt_cache_bytes, model.cache_limit + free // len(capped))
            if limit - model.cache_limit >= min(CACHE_RAISE_STEP_BYTES, self.prompt_cache_bytes - model.cache_limit):
                model.cache_limit = limit
                self._background(model.runner.trim_cache(limit), "raising a prompt cache's limit")

    async def _watch(self, model: LoadedModel) -> None:
        """A runner that exits without being asked is a crash: drop the model at once."""
        code = await model.runner.exited
        if self._models.get(model.key) is model:
            del self._models[model.key]
            if self._closed:
                return
            self.log.warning("runner for %s (pid %d) exited with code %s", model.model_id, model.runner.pid, code)
            self.on_event("model.crash", model.model_id, status="error", error_type=f"exit_{code}")

    async def _expire(self, model: LoadedModel) -> None:
        if self._models.get(model.key) is model and model.in_flight == 0 and not self._users.get(model.key):
            with contextlib.suppress(NotFound, Conflict):
                await self.unload(model.model_id, reason="expire")

    async def _reap_expired(self) -> None:
        """Every second: expire idle models, keep the prompt caches inside the budget. An
        exception in one round is logged; the reaper goes on."""
        while True:
            await asyncio.sleep(1)
            try:
                await self._reap_once()
            except Exception:
                self.log.exception("pool: the keep-alive reaper's round failed")

    async def _reap_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for model in list(self._models.values()):
            if model.expires_at is not None and model.expires_at <= now:
                await self._expire(model)
        if not self._lock.locked():  # a load in progress makes room itself
            async with self._lock:
                await self._fit_prompt_caches()
