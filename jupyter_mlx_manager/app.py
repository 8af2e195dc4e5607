"""The `jupyter_mlx_manager` server extension: configuration, services and routes."""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from . import metrics, system
from ._version import __version__
from .audit import AuditLog
from .audit.log import EVENT_SCHEMA_ID
from .auth import TokenIssuer, UserService, resolve_secret
from .backends import Backends, LocalBackend, RemoteBackends, parse_backends
from .batches import BatchService, FileStore, LineRunner
from .budgets import Budgets, check_budgets
from .downloads import DownloadManager
from .errors import BadRequest, MLXError
from .handlers import ROUTES
from .handlers.proxy import SharedService, shared_service_routes
from .inference import InferenceService, RequestLimits, ServingPipeline
from .inference.audio import AudioService
from .inference.embeddings import EmbeddingService
from .inference.images import ImageLimits
from .inference.stored import ResponseStore
from .integrations.jupyter_ai import configure_jupyternaut
from .jobs import JobService, JobSpecs
from .models.catalog import ModelCatalog
from .models.hub import HubSearch
from .pool import ModelPool
from .profiles import Profiles, check_aliases, check_profile
from .services import Services
from .storage import Database


class MLXManager(ExtensionApp):
    """Find, download, load, share and audit local MLX models (`c.MLXManager.<trait>`)."""

    name = "jupyter_mlx_manager"
    load_other_extensions = True

    data_dir = Unicode(
        help="Where the database and the generated JWT secret live. "
        "Default: <jupyter data dir>/mlx_manager (e.g. ~/.local/share/jupyter/mlx_manager).",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "mlx_manager")

    owner_username = Unicode(
        help="Account that every Jupyter-authenticated request acts as when Jupyter's identity "
        "provider cannot tell people apart (a plain single-user server). Created at startup as "
        "an approved admin. Default: $JUPYTERHUB_USER under JupyterHub, else the OS login name. "
        "Empty: no owner; the first user to register becomes the admin.",
    ).tag(config=True)

    @default("owner_username")
    def _default_owner(self) -> str:
        if os.environ.get("JUPYTERHUB_USER"):  # a JupyterHub single-user server belongs to its Hub user
            return os.environ["JUPYTERHUB_USER"]
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return "owner"

    jwt_secret = Unicode(
        "",
        help="HS256 secret for the JWTs this extension issues (at least 32 bytes). Default: the "
        "env var JUPYTER_MLX_MANAGER_JWT_SECRET, else a random secret generated once into "
        "<data_dir>/jwt_secret with mode 0600.",
    ).tag(config=True)

    access_token_expiry_hours = Float(
        24.0, help="Lifetime of the access token a password login returns. Default: 24."
    ).tag(config=True)

    allow_registration = Bool(
        help="Let anyone reach mlx/api/auth/register; new users wait for an admin's approval. "
        "Default: True, except under JupyterHub (JUPYTERHUB_API_TOKEN set), where the Hub owns identity.",
    ).tag(config=True)

    @default("allow_registration")
    def _default_allow_registration(self) -> bool:
        return not os.environ.get("JUPYTERHUB_API_TOKEN")

    registration_limit = Int(
        5,
        help="Registrations allowed per client address per 10 minutes; beyond it 429 with "
        "Retry-After. 0 = unlimited. Default: 5.",
    ).tag(config=True)

    model_dirs = List(
        Unicode(), help="Extra folders whose sub-folders are MLX models, served as local/<dir name>. Default: []."
    ).tag(config=True)

    max_memory_gb = Float(
        0.0, help="Memory budget for loaded models in GiB; 0 = automatic (75% of system memory). Default: 0."
    ).tag(config=True)

    max_loaded_models = Int(3, help="How many models may be loaded at once. Default: 3.").tag(config=True)

    max_concurrent_downloads = Int(
        2, help="How many model downloads run at once; more wait in the queue. Default: 2."
    ).tag(config=True)

    hf_token = Unicode(
        "",
        help="Hugging Face token for gated or private repos (search and downloads). Never logged. "
        "Default: the env var HF_TOKEN, else the token saved by `hf auth login`.",
    ).tag(config=True)

    prompt_cache_gb = Float(
        1.0,
        help="Byte budget (GiB) of each loaded model's prompt cache: KV caches of recent prompts, "
        "reused for requests that share a prefix (a system prompt, a conversation so far); "
        "0 disables it. Default: 1.",
    ).tag(config=True)

    prompt_cache_scope = Enum(
        ["user", "shared"],
        "user",
        help="Who may reuse a cached prompt prefix: 'user' (default) only the user who sent it (no one "
        "learns from timing what another user sent), 'shared' every user (a common system prompt is "
        "computed once). Nothing in a request widens it.",
    ).tag(config=True)

    prompt_cache_disk_gb = Float(
        8.0,
        help="Byte bound (GiB) of the prompt cache on disk: KV prefixes of long prompts kept across "
        "unloads, evictions, crashes and restarts, least recently used deleted first; 0 turns it off. "
        "Default: 8.",
    ).tag(config=True)

    prompt_cache_dir = Unicode(
        "",
        help="Folder of the prompt cache on disk. Default: <data_dir>/prompt-cache.",
    ).tag(config=True)

    draft_models = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="Speculative decoding per model id, e.g. {'local/my-model': 'local/my-small-model'} or "
        "{'local/my-model': 'prompt_lookup'}: a draft model (a local text model sharing the model's tokenizer, loaded "
        "in the same runner and counted in its memory) proposes tokens, or 'prompt_lookup' drafts them from n-grams of "
        "the prompt (edit-heavy agent work repeats its input); the model verifies them in one forward pass. Greedy "
        "requests decoding alone only (a batch runs without); the output is the model's own. A draft that cannot be "
        "used is logged and the model loads without it. POST mlx/api/pool/load may ask for another. Default: {}.",
    ).tag(config=True)

    prompt_cache_min_tokens = Int(
        1024,
        help="The shortest prompt prefix (in tokens) written to the prompt cache on disk. Default: 1024.",
    ).tag(config=True)

    max_tokens_limit = Int(
        4096,
        help="Largest max_tokens an OpenAI request may ask for (also the default for chat); "
        "the model's context length bounds it further. Default: 4096.",
    ).tag(config=True)

    default_keep_alive = Float(
        300.0,
        help="Seconds an idle model stays loaded (Ollama semantics): negative = forever, "
        "0 = unload as soon as idle. Default: 300.",
    ).tag(config=True)

    audit_retention_days = Int(90, help="Audit records older than this are pruned; 0 = keep forever. Default: 90.").tag(
        config=True
    )

    audit_record_content = Bool(
        False, help="Store prompt and completion text in the audit log. Default: False (only counts and timings)."
    ).tag(config=True)

    max_requests_per_user = Int(
        8,
        help="Concurrent inference requests one user may have in flight (all models together); "
        "beyond it a request is refused with 429 and Retry-After. 0 = unlimited. Default: 8.",
    ).tag(config=True)

    max_batch_size = Int(
        16,
        help="Requests of one model decoding together in its runner; more wait in that model's "
        "queue (in arrival order). Default: 16.",
    ).tag(config=True)

    max_queued_requests = Int(
        64,
        help="Requests that may wait for a decoding slot of one model; beyond it a request is "
        "refused with 503 server_busy and Retry-After. Default: 64.",
    ).tag(config=True)

    batch_slots = Int(
        -1,
        help="Decoding slots of one model that background batch lines may hold at once (they wait while "
        "any interactive request is waiting). Default: -1 = half of max_batch_size.",
    ).tag(config=True)

    max_concurrent_jobs = Int(
        1,
        help="Workbench jobs (fine-tune, evaluate, convert) that run at once, each in its own process with "
        "its memory counted in the pool's budget; the others wait in order. Default: 1.",
    ).tag(config=True)

    prefill_step_size = Int(
        512,
        help="Prompt tokens prefilled per scheduler step on every path: no single step holds up "
        "other streams, admission or cancellation for longer than one chunk. Default: 512.",
    ).tag(config=True)

    runner_stall_seconds = Float(
        30.0,
        help="A runner that has work and sends no heartbeat for this many seconds is killed; its "
        "requests fail with runner_stalled and the next request loads the model again (one that keeps "
        "heartbeating but makes no progress is given ten times as long: a step of a big model can be slow). "
        "Default: 30.",
    ).tag(config=True)

    responses_ttl_hours = Float(
        24.0,
        help="How long stored OpenAI Responses (POST mlx/v1/responses without store: false) are kept, "
        "per user, for previous_response_id and GET mlx/v1/responses/{id}; expired ones are pruned. "
        "0 = store none. Default: 24.",
    ).tag(config=True)

    allow_image_urls = Bool(
        False,
        help="Accept http(s) image URLs in chat (the server would fetch them: off, against SSRF). "
        "Default: False: images travel as data URLs or base64.",
    ).tag(config=True)

    max_images_per_request = Int(8, help="Images one chat request may carry (each at most 20 MB).").tag(config=True)

    max_body_mb = Float(
        16.0,
        help="The largest JSON request body, in MB, refused with 413 from its Content-Length before it "
        "is read. Routes that carry images or audio allow what those need on top. Default: 16.",
    ).tag(config=True)

    max_image_mb_in_flight = Float(
        256.0,
        help="Bytes of image-carrying requests (chat, Messages, Responses) one user may have in flight "
        "at once, in MB, counted from Content-Length before the body is read; beyond it 429 with "
        "Retry-After. Default: 256.",
    ).tag(config=True)

    max_connections_per_ip = Int(
        256,
        help="`jupyter mlx-manager serve`: open connections one client address may hold; more are "
        "closed at once. 0 = no bound. Not applied as a JupyterHub service, whose clients all come "
        "through the Hub's proxy. Default: 256.",
    ).tag(config=True)

    warm_runner = Bool(
        True,
        help="Keep one spare runner process with MLX and mlx-lm already imported, waiting for a "
        "model: a load hands it the model and skips seconds of imports (a new spare starts in the "
        "background). The spare is not a loaded model and is not counted in the memory budget. "
        "Default: True.",
    ).tag(config=True)

    hf_token_for_users = Bool(
        False,
        help="Let non-admin users' Hub searches and downloads use the server's Hugging Face token "
        "(and so see its private and gated repos). Default: False: only admins' requests use it.",
    ).tag(config=True)

    budgets = Dict(
        help=(
            "Token budgets (prompt + completion tokens) per UTC minute, day and month: "
            '{"default": {"tokens_per_day": 200000}, "users": {"alice": {...}}, "groups": {"students": {...}}}, '
            "each with tokens_per_minute / tokens_per_day / tokens_per_month (0 or absent = unlimited). A user's own "
            "budget wins, else their JupyterHub groups' most generous, else the default. Admins change them at "
            "run time with PUT mlx/api/budgets. Default: none."
        )
    ).tag(config=True)
    profiles = Dict(
        help=(
            'Model profiles by name: {"coder": {"model": "local/x" (or "models": [...] in order: the first that is '
            'up and has room serves), "system", "temperature", "top_p", "top_k", "min_p", penalties, '
            '"max_tokens", "keep_alive", "chat_template_kwargs"}}. A profile\'s name is a model id clients may '
            "ask for; a request's own values win. Admins add more with PUT mlx/api/profiles/<name>. Default: none."
        )
    ).tag(config=True)
    aliases = Dict(
        help='Names clients insist on → profiles or models, glob patterns allowed: {"claude-*": "coder", '
        '"gpt-5": "coder"}. Default: none.'
    ).tag(config=True)
    remote_backends = Dict(
        help="Models served by other OpenAI-compatible servers (vLLM, exo, mlx_lm.server, a LiteLLM "
        "proxy, another jupyter-mlx-manager), as remote/<name>/<upstream id>, behind this server's "
        'auth, limits and audit: {"<name>": {"url": "http://host:8000/v1", "api_key_env": "ENV_VAR" '
        '(optional: the upstream key, read from that variable, never shown), "models": [...] '
        "(optional: else discovered from the upstream's GET /models)}}. Default: {}.",
    ).tag(config=True)

    configure_jupyter_ai = Bool(
        True,
        help="With jupyter-ai's Jupyternaut in this server, list this server's chat models (local text and "
        "vision models, profiles) in Jupyternaut's model picker: its config file gets one custom model per "
        "chat model at mlx/v1, with an API token of the owner's (the file made 0600; the token never logged). "
        "Not with pool_url or without an owner account. Default: True.",
    ).tag(config=True)

    pool_url = Unicode(
        "",
        help="URL of a shared model service (`jupyter mlx-manager serve`, e.g. run as a JupyterHub "
        "service: http://127.0.0.1:8000/services/mlx/). When set, this server runs no runners: its "
        "mlx/api and mlx/v1 routes are forwarded there on behalf of the same user (with this "
        "server's Hub token, $JUPYTERHUB_API_TOKEN). Default: '' (models run here).",
    ).tag(config=True)

    @validate("pool_url")
    def _check_pool_url(self, proposal) -> str:
        value = proposal["value"].strip()
        if value and not value.startswith(("http://", "https://")):
            raise TraitError(f"pool_url must be an http(s) URL, not {value!r}")
        return value.rstrip("/") + "/" if value else ""

    # -- life cycle -------------------------------------------------------------------------
    def initialize_settings(self) -> None:
        data_dir = Path(self.data_dir).expanduser()
        self.db = Database(data_dir / "mlx_manager.sqlite3")
        self.db.open()
        event_logger = self.serverapp.event_logger
        event_logger.register_event_schema(Path(__file__).parent / "audit" / "event_schema.yaml")
        self.audit = AuditLog(self.db, emit=lambda record: event_logger.emit(schema_id=EVENT_SCHEMA_ID, data=record))
        # Retention: prune once now, then hourly, on the event loop (the delete runs on the db writer).
        IOLoop.current().add_callback(self._prune_audit)
        self._pruner = PeriodicCallback(self._prune_audit, 3600 * 1000)
        self._pruner.start()
        self.users = UserService(
            self.db,
            TokenIssuer(resolve_secret(self.jwt_secret, data_dir, self.log)),
            self.audit,
            access_token_hours=self.access_token_expiry_hours,
            allow_registration=self.allow_registration,
            registration_limit=self.registration_limit,
        )
        if self.owner_username:
            owner = self.users.ensure_owner_sync(self.owner_username)
            if owner["status"] != "approved" or not owner["is_admin"]:
                self.log.warning(
                    "The owner account %r is %s and not an approved admin.", owner["username"], owner["status"]
                )
        if self.pool_url:  # a shared model service runs the models: no pool, runners or downloads here
            self._initialize_forwarding(data_dir)
            return
        self.catalog = ModelCatalog(
            [data_dir / "models", *(Path(d).expanduser() for d in self.model_dirs)], adapter_dir=data_dir / "adapters"
        )
        self.pool = ModelPool(
            self.catalog,
            max_memory_bytes=system.memory_budget_bytes(self.max_memory_gb),
            max_loaded_models=self.max_loaded_models,
            default_keep_alive=self.default_keep_alive,
            log=self.log,
            on_event=self._record_pool_event,
            runner_args=[
                "--prompt-cache-bytes",
                str(int(max(0.0, self.prompt_cache_gb) * 1024**3)),
                "--prefill-step-size",
                str(max(1, self.prefill_step_size)),
                "--prompt-cache-dir",
                str(Path(self.prompt_cache_dir).expanduser() if self.prompt_cache_dir else data_dir / "prompt-cache"),
                "--prompt-cache-disk-bytes",
                str(int(max(0.0, self.prompt_cache_disk_gb) * 1024**3)),
                "--prompt-cache-min-tokens",
                str(max(1, self.prompt_cache_min_tokens)),
            ],  # fmt: skip
            runner_stall_seconds=self.runner_stall_seconds,
            warm_runner=self.warm_runner,
            draft_models=self.draft_models,
            draft_for=lambda model_id: self.profile_service.draft_for(model_id),
        )
        IOLoop.current().add_callback(self.pool.start)  # the keep-alive reaper and the warm spare
        hf_endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.hub_search = HubSearch(hf_endpoint, self.hf_token or None, hf_token_for_users=self.hf_token_for_users)
        self.downloads = DownloadManager(
            self.db, self.audit, self.catalog.hub_cache, hf_endpoint, self.hf_token or None,
            max_concurrent=self.max_concurrent_downloads, log=self.log, hf_token_for_users=self.hf_token_for_users,
        )  # fmt: skip
        IOLoop.current().add_callback(self.downloads.start)  # resumes unfinished downloads
        self.limits = RequestLimits(
            self.max_requests_per_user,
            self.max_batch_size,
            self.max_queued_requests,
            batch_slots=None if self.batch_slots < 0 else self.batch_slots,
        )
        self.remote = RemoteBackends(self._remote_backend_configs(), log=self.log)
        self.backends = Backends(LocalBackend(self.pool, self.prompt_cache_scope), self.remote)
        self.profile_service = Profiles(self.db, *self._profile_config(), self._serves_now)
        self.profile_service.load()
        self.budget_service = Budgets(self.db, self._budget_config())
        self.budget_service.load()
        self.audit.listeners.append(self.budget_service.on_record)
        pipeline = ServingPipeline(self.backends, self.audit, self.limits, self.budget_service)
        self.completions = InferenceService(
            pipeline,
            self.max_tokens_limit,
            record_content=self.audit_record_content,
            image_limits=ImageLimits(max(0, self.max_images_per_request), self.allow_image_urls),
        )
        self.embeddings = EmbeddingService(pipeline)
        self.audio = AudioService(pipeline)
        self.responses = ResponseStore(self.db, self.responses_ttl_hours)
        self.files = FileStore(self.db, data_dir / "files")
        self.batches = BatchService(
            self.db,
            self.files,
            self.users.get_by_name,
            LineRunner(self.completions, self.embeddings),
            self.limits.batch_slots,
            self.log,
        )
        IOLoop.current().add_callback(self.batches.start)  # resumes the batches a stop interrupted
        root_dir = getattr(getattr(self, "serverapp", None), "root_dir", None)
        specs = JobSpecs(self.catalog, data_dir, Path(root_dir) if root_dir else None, self._own_file)
        self.jobs = JobService(self.db, self.audit, self.pool, specs, self.max_concurrent_jobs, self.log)
        IOLoop.current().add_callback(self.jobs.start)  # interrupted jobs marked, the queue served
        self.jupyternaut = configure_jupyternaut(self)  # our chat models in jupyter-ai's Jupyternaut
        metrics.install(self)
        self._background: set[asyncio.Task] = set()
        self.users.change_listeners.append(self._recheck_sockets)
        self._device: asyncio.Task | None = None
        self.services = self._services(
            catalog=self.catalog, pool=self.pool, downloads=self.downloads, hub_search=self.hub_search,
            limits=self.limits, remote=self.remote, backends=self.backends, profiles=self.profile_service,
            budgets=self.budget_service, completions=self.completions, embeddings=self.embeddings, audio=self.audio,
            responses=self.responses, files=self.files, batches=self.batches, jobs=self.jobs,
        )  # fmt: skip
        self.log.info("jupyter-mlx-manager %s: data in %s", __version__, data_dir)

    def _profile_config(self) -> tuple[dict, dict]:
        """The checked `profiles` and `aliases`; a bad entry is logged and left out."""
        profiles = {}
        for name, value in self.profiles.items():
            try:
                profiles[name] = check_profile(name, value)
            except MLXError as exc:
                self.log.error("c.MLXManager.profiles: %s; left out", exc)
        try:
            aliases = check_aliases(self.aliases)
        except MLXError as exc:
            self.log.error("c.MLXManager.aliases: %s; none apply", exc)
            aliases = {}
        return profiles, aliases

    async def _serves_now(self, model_id: str) -> bool:
        """A profile's model can serve: its backend has it up, and its queue has room."""
        try:
            available = await self.backends.resolve(model_id).available(model_id)
        except MLXError:
            return False
        return available and self.limits.queue_depth(model_id) < self.limits.max_queued_requests

    def _own_file(self, user: str, file_id: str) -> Path:
        """The path of an uploaded file of `user`'s (a job's `data`); a 400 if there is none."""
        if not self.db.write_sync(
            lambda conn: conn.execute("SELECT 1 FROM files WHERE id = ? AND user = ?", (file_id, user)).fetchone()
        ):
            raise BadRequest(f"data: no file {file_id!r}", reason="invalid_data")
        return self.files.path(file_id)

    def _budget_config(self) -> dict:
        """The checked `budgets`; a bad value is logged and no configured budgets apply."""
        try:
            return check_budgets(self.budgets)
        except MLXError as exc:
            self.log.error("c.MLXManager.budgets: %s; no configured budgets apply", exc)
            return {}

    def _remote_backend_configs(self) -> dict:
        """The checked `remote_backends`; a bad entry is logged and none are served. (Checked
        here, not in a trait validator: a validator's error at link time leaves the extension
        loading with none of its configuration, data_dir included.)"""
        try:
            return parse_backends(self.remote_backends, os.environ)
        except ValueError as exc:
            self.log.error("c.MLXManager.%s; no remote backends are served", exc)
            return {}

    def _initialize_forwarding(self, data_dir: Path) -> None:
        """pool_url: only accounts, tokens and the audit of this server's own auth live here."""
        self._background: set[asyncio.Task] = set()
        self.users.change_listeners.append(self._recheck_sockets)
        self._device: asyncio.Task | None = None
        self.shared_service = SharedService(self.pool_url, log=self.log)
        self.services = self._services(shared_service=self.shared_service)
        self.log.info("jupyter-mlx-manager %s: models served by %s (data in %s)", __version__, self.pool_url, data_dir)

    def _services(self, **services: Any) -> Services:
        return Services(
            users=self.users,
            audit=self.audit,
            system_status=self.system_status,
            max_tokens_limit=self.max_tokens_limit,
            max_body_mb=self.max_body_mb,
            max_image_mb_in_flight=self.max_image_mb_in_flight,
            owner_username=self.owner_username,
            **services,
        )

    def initialize_handlers(self) -> None:
        routes = shared_service_routes(ROUTES) if self.pool_url else ROUTES
        self.handlers.extend((pattern, handler, {"services": self.services}) for pattern, handler in routes)

    async def stop_extension(self) -> None:
        if self.pool_url:
            await self._stop_forwarding()
            return
        metrics.uninstall(self)
        self._pruner.stop()
        if self.jupyternaut is not None:
            self.jupyternaut.stop()
        # Inference requests end with a final event (an error in their stream) before runners stop.
        for handler in list(self.services.in_flight.requests):
            handler.end_for_shutdown()
        for _ in range(100):
            if not self.services.in_flight.requests:
                break
            await asyncio.sleep(0.05)
        await self.downloads.stop()
        await self.batches.stop()
        await self.jobs.stop()
        await self.remote.close()
        await self.pool.shutdown()
        for socket in list(self.services.in_flight.sockets):
            socket.close(1001, "server shutting down")
        self.services.in_flight.sockets.clear()
        if self._device is not None:
            self._device.cancel()
        if self._background:  # audit records of the last pool events, socket re-checks
            await asyncio.wait(self._background, timeout=5)
        self.db.close()

    async def _stop_forwarding(self) -> None:
        self._pruner.stop()
        for handler in list(self.services.in_flight.requests):
            handler.end_for_shutdown()
        for socket in list(self.services.in_flight.sockets):
            socket.close(1001, "server shutting down")
        self.services.in_flight.sockets.clear()
        await self.shared_service.close()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        self.db.close()

    # -- services used by handlers ----------------------------------------------------------
    async def system_status(self) -> dict[str, Any]:
        if self._device is None:
            self._device = asyncio.ensure_future(system.probe_device())
        return {
            "version": __version__,
            "device": await asyncio.shield(self._device),
            "memory": {**system.memory(), "budget_bytes": system.memory_budget_bytes(self.max_memory_gb)},
            "pool": {
                "loaded_models": len(self.pool.loaded_models()),
                "max_loaded_models": self.max_loaded_models,
                "memory_used_bytes": self.pool.status()["memory_used_bytes"],
            },
        }

    def _record_pool_event(self, action: str, model_id: str, **fields: Any) -> None:
        """Pool events (load, unload, evict, expire, crash) go to the audit trail."""
        fields.setdefault("status", "ok")
        self._spawn(self.audit.record(action, model=model_id, client="server", **fields))

    async def _prune_audit(self) -> None:
        removed = await self.audit.prune(self.audit_retention_days)
        if removed:
            self.log.info("audit: pruned %d records older than %d days", removed, self.audit_retention_days)

    def _spawn(self, coroutine) -> None:
        """Background work that stop_extension waits for before closing the database."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _recheck_sockets(self, user_id: int) -> None:
        for socket in list(self.services.in_flight.sockets):
            if socket.mlx_user["id"] == user_id:
                self._spawn(socket.still_allowed())
