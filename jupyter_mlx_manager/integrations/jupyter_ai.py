"""jupyter-ai's Jupyternaut lists this server's chat models without hand configuration.

Jupyternaut (jupyter-ai 3, package `jupyter_ai_jupyternaut`) takes its models from its own
config file (`<jupyter data dir>/jupyter_ai/config.json`, or `c.ConfigManager.config_path`):
the `custom_models` there head its model picker, each a LiteLLM model id plus the keyword
arguments LiteLLM gets (`api_base`, `api_key`). When Jupyternaut's server extension runs in
this server, one entry per chat model (local text and vision models, profiles) is kept there
through Jupyternaut's own `ConfigManager` (what its settings view calls): `openai/<model id>`
at this server's `mlx/v1`, with an API token of the owner's. The file then holds that token:
it is made 0600 before the token is written, and the token is never logged. Entries are
recognised by their id (derived from the model id), so the user's own custom models and the
user's edits of ours (name, description, extra parameters) are kept; models that appear or go
are followed every minute, and live chats' pickers are refreshed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop, PeriodicCallback

from ..auth import Actor, InvalidToken
from ..models.kinds import GENERATIVE_KINDS

if TYPE_CHECKING:
    from ..app import MLXManager

CONFIG_MANAGER_SETTING = "jupyternaut.config_manager"  # where Jupyternaut's extension puts its ConfigManager
TOKEN_NAME = "jupyter-ai"
REFRESH_SECONDS = 60
# Our entries' ids are `custom-<uuid5 of the LiteLLM id>/<LiteLLM id>` (Jupyternaut's id format):
# stable across restarts (a chat's model choice survives them) and recognisable as ours.
_ID_NAMESPACE = uuid.UUID("5b0c6a55-2f57-4c8e-9d0e-6a1d3c1b7f42")
_WILDCARD_IPS = ("", "0.0.0.0", "*")


def custom_model_id(litellm_id: str) -> str:
    """The Jupyternaut custom-model id of one of our models."""
    return f"custom-{uuid.uuid5(_ID_NAMESPACE, litellm_id)}/{litellm_id}"


def is_ours(custom_id: str) -> bool:
    return custom_id == custom_model_id(custom_id.partition("/")[2])


def configure_jupyternaut(app: MLXManager) -> JupyternautModels | None:
    """Started from `initialize_settings` when `configure_jupyter_ai` is on and there is an owner."""
    if not app.configure_jupyter_ai or not app.owner_username:
        return None
    models = JupyternautModels(app)
    IOLoop.current().add_callback(models.start)  # once every extension is loaded and the port is bound
    return models


class JupyternautModels:
    """Keeps our chat models in Jupyternaut's config (see the module docstring)."""

    def __init__(self, app: MLXManager):
        self.app = app
        self.log = app.log
        self._timer: PeriodicCallback | None = None
        self._made: str | None = None  # the token this process made: not one more per failed write
        self._lock = asyncio.Lock()

    @property
    def config_manager(self) -> Any:
        """Jupyternaut's ConfigManager; None without Jupyternaut (or a Jupyter server: `mlx-manager serve`)."""
        web_app = getattr(self.app.serverapp, "web_app", None)
        return web_app.settings.get(CONFIG_MANAGER_SETTING) if web_app is not None else None

    async def start(self) -> None:
        if self.config_manager is None:
            return  # Jupyternaut is not in this server
        if self.api_base() is None:
            self.log.info(
                "jupyter-ai: this server listens on a Unix socket, which Jupyternaut cannot reach; not configured"
            )
            return
        await self.refresh()
        self._timer = PeriodicCallback(self.refresh, REFRESH_SECONDS * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    def api_base(self) -> str | None:
        """This server's `mlx/v1`, as a process on this machine reaches it (None on a Unix socket)."""
        server = self.app.serverapp
        if server.sock:
            return None
        host = "127.0.0.1" if server.ip in _WILDCARD_IPS else "[::1]" if server.ip == "::" else server.ip
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        scheme = "https" if server.certfile else "http"
        return f"{scheme}://{host}:{server.port}{server.base_url}mlx/v1"

    async def refresh(self) -> None:
        """Write our entries where they changed; logs (never raises) when that fails."""
        async with self._lock:
            try:
                await self._refresh()
            except Exception:
                self.log.exception("jupyter-ai: could not update Jupyternaut's models")

    async def _refresh(self) -> None:
        from jupyter_ai_jupyternaut.config import CustomModel, UpdateConfigRequest

        manager = self.config_manager
        chat_models = await asyncio.get_running_loop().run_in_executor(None, self._chat_models)
        current = manager.custom_models
        ours = {entry.id: entry for entry in current if is_ours(entry.id)}
        if not chat_models and not ours:
            return  # nothing to write, and no token to make
        token = await self._token([entry.params.get("api_key") for entry in ours.values()]) if chat_models else ""
        params = {"api_base": self.api_base(), "api_key": token}
        wanted = {}
        for model_id, description in chat_models:
            litellm_id = f"openai/{model_id}"
            old = ours.get(custom_model_id(litellm_id))
            wanted[custom_model_id(litellm_id)] = CustomModel(
                id=custom_model_id(litellm_id),
                name=old.name if old else model_id,
                description=old.description if old else description,
                model_id=litellm_id,
                params={**(old.params if old else {}), **params},
            )
        kept = [wanted.pop(entry.id, entry) for entry in current if not is_ours(entry.id) or entry.id in wanted]
        updated = kept + list(wanted.values())
        if [entry.model_dump() for entry in updated] == [entry.model_dump() for entry in current]:
            return
        os.chmod(manager.config_path, 0o600)  # before the token is in it (the file exists: Jupyternaut made it)
        manager.update_config(UpdateConfigRequest(custom_models=updated))
        self._refresh_pickers()
        self.log.info(
            "jupyter-ai: Jupyternaut lists %d chat models of this server (%s)", len(chat_models), manager.config_path
        )

    def _chat_models(self) -> list[tuple[str, str]]:
        """(model id, description) of every chat model: local text and vision models, then profiles. Blocking."""
        local = [
            (info["id"], f"{info['kind'].capitalize()} model on this Jupyter server (jupyter-mlx-manager)")
            for info in self.app.catalog.list_local()
            if info.get("kind") in GENERATIVE_KINDS
        ]
        profiles = [
            (name, "Profile on this Jupyter server (jupyter-mlx-manager)")
            for name in sorted(self.app.profile_service.table())
        ]
        return local + profiles

    async def _token(self, candidates: list[Any]) -> str:
        """The owner's API token already in the config if it is still valid, else a new one."""
        users = self.app.users
        owner = await users.get_by_name(self.app.owner_username)
        if owner is None:
            raise RuntimeError(f"no owner account {self.app.owner_username!r}")
        for token in [self._made, *candidates]:
            if not isinstance(token, str):
                continue
            try:
                user, claims = await users.user_for_token(token)
            except InvalidToken:
                continue
            if user is not None and user["id"] == owner["id"] and claims.kind == "api":
                return token
        self._made = (await users.create_api_token(Actor(user=owner, client="server"), TOKEN_NAME))["token"]
        return self._made

    def _refresh_pickers(self) -> None:
        """Live Jupyternaut personas re-publish their model options (as its config API does after a save)."""
        managers = (self.app.serverapp.web_app.settings.get("jupyter-ai") or {}).get("persona-managers") or {}
        for manager in managers.values():
            for persona in manager.personas.values():
                sync = getattr(persona, "sync_model_configuration", None)
                if callable(sync):
                    try:
                        sync()
                    except Exception:
                        self.log.exception("jupyter-ai: a persona's model list was not refreshed")
