"""`mlx/api/pool…`: see, load and unload models. Who may pin, set a long keep-alive or
force an unload is the pool's decision (`ModelPool.load`/`unload` take the user); what a load
means is the model's backend's (a remote model has nothing to load)."""

from __future__ import annotations

from ..backends.base import LoadOptions
from ..errors import BadRequest
from .base import MLXAPIHandler, authorized, web


class PoolHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        status = self.services.pool.status()
        status["limits"].update(self.services.limits.status())  # the request limits live above the pool
        status["models"] += await self.services.remote.pool_entries()  # with their backend and health
        for model in status["models"]:
            model["queued"] = self.services.limits.queue_depth(model["model"])
        self.write_json(status)


class PoolLoadHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        pin = body.get("pin")
        if pin is not None and not isinstance(pin, bool):
            raise BadRequest("pin must be true or false", reason="invalid_pin")
        model_id = body.get("model")
        backend = self.services.backends.resolve(model_id)
        options = LoadOptions(pin, body.get("keep_alive"), body.get("draft_model"), body.get("speculative"))
        loaded = await backend.load(model_id, user=self.mlx_user, options=options)
        self.write_json(loaded)


class PoolUnloadHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        model_id, force = body.get("model"), body.get("force", False)
        if not isinstance(model_id, str):
            raise BadRequest("model is required", reason="invalid_model_id")
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false", reason="invalid_force")
        backend = self.services.backends.resolve(model_id)
        self.write_json(await backend.unload(model_id, user=self.mlx_user, force=force))
