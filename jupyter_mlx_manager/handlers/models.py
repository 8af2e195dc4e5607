"""`mlx/api/models/…`: search the Hub, list local models, inspect or delete one. The
services decide what each user may do and see (the Hub token, folder paths, deletes)."""

from __future__ import annotations

import asyncio

from ..errors import BadRequest, NotFound
from ..models.hub import SearchQuery
from ..models.ids import validate_model_id
from ..models.inspection import weights_bytes
from .base import MLXAPIHandler, authorized, web

_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def _local_fields(handler: MLXAPIHandler, info: dict, weights: int) -> dict:
    info["loaded"] = handler.services.pool.get_loaded_model(info["id"]) is not None
    info["downloading"] = handler.services.downloads.active_for(info["id"]) is not None
    info["memory_estimate_bytes"] = handler.services.pool.estimate_bytes(weights)  # what a load must make room for
    return info


def _weights(catalog, model_id: str) -> int:
    folder = catalog.resolve(model_id)
    return weights_bytes(folder) if folder is not None else 0


async def _off_loop(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class ModelSearchHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        names = ("q", "author", "arch", "quant", "max_size_gb", "sort", "limit", "kind", "format")
        query = SearchQuery.parse({name: self.get_query_argument(name, None) for name in names})
        local = set(await _off_loop(self.services.catalog.local_ids))
        self.write_json({"models": await self.services.hub_search.search(query, local, user=self.mlx_user)})


class LocalModelsHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        catalog = self.services.catalog

        def listed():
            return [(m, _weights(catalog, m["id"])) for m in catalog.list_local(self.mlx_user)]

        self.write_json({"models": [_local_fields(self, m, weights) for m, weights in await _off_loop(listed)]})


class LocalModelHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, model_id: str):
        validate_model_id(model_id)
        info = await _off_loop(self.services.catalog.describe, model_id, self.mlx_user)
        if info is None:
            raise NotFound(f"model {model_id} is not on this machine", reason="model_not_found")
        self.write_json(_local_fields(self, info, await _off_loop(_weights, self.services.catalog, info["id"])))

    @web.authenticated
    @authorized
    async def delete(self, model_id: str):
        validate_model_id(model_id)
        force = self.get_query_argument("force", "").lower()
        if force not in _TRUE + _FALSE:
            raise BadRequest("force must be 1 or 0", reason="invalid_force")
        result = await self.services.pool.delete_model(
            model_id, user=self.mlx_user, force=force in _TRUE, downloads=self.services.downloads
        )
        await self.services.audit.record(
            "model.delete", user=self.mlx_user["username"], client=self.actor.client, model=result["id"],
            detail=f"freed={result['freed_bytes']}",
        )  # fmt: skip
        self.write_json(result)
