"""`mlx/api/status`: what the sidebar panel shows first."""

from __future__ import annotations

from .base import MLXAPIHandler, authorized, web


class StatusHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.write_json({**await self.mlx.system_status(), "user": self.mlx_user})
