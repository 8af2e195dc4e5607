"""`mlx/api/pool…`: see, load and unload models."""

from __future__ import annotations

from ..errors import BadRequest
from .base import MLXAPIHandler, authorized, web


class PoolHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.write_json(self.mlx.pool.status())


class PoolLoadHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        pin = body.get("pin")
        if pin is not None and not isinstance(pin, bool):
            raise BadRequest("pin must be true or false", reason="invalid_pin")
        model = await self.mlx.pool.load(
            body.get("model"), pin=pin, keep_alive=body.get("keep_alive"), by=self.mlx_user["username"]
        )
        self.write_json(model.status())


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
        await self.mlx.pool.unload(model_id, by=self.mlx_user["username"], force=force)
        self.write_json({"model": model_id, "status": "unloaded"})
