"""`mlx/api/status` (what the sidebar panel shows first) and `mlx/api/openapi.json`."""

from __future__ import annotations

from .. import openapi
from .base import MLXAPIHandler, authorized, web


class StatusHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.write_json({**await self.services.system_status(), "user": self.mlx_user})


class OpenAPIHandler(MLXAPIHandler):
    """`mlx/api/openapi.json`: the OpenAPI 3.1 description of every route."""

    @web.authenticated
    @authorized
    async def get(self):
        self.write_json(openapi.document(self.base_url))
