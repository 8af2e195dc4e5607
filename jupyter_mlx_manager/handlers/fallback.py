"""Paths under `mlx/api` and `mlx/v1` that name no route: a JSON 404 in the area's envelope.

Without these, Jupyter answers with its HTML error page (for a POST: "403: '_xsrf' argument
missing"), which is what LiteLLM and the SDKs would then show users.
"""

from __future__ import annotations

from ..errors import NotFound
from .base import MLXAPIHandler, authorized, web
from .openai import OpenAIHandler


class _UnknownRoute:
    def _refuse(self, *args):
        raise NotFound(f"no such endpoint: {self.request.method} {self.request.path}", reason="unknown_route")

    @web.authenticated
    @authorized
    async def get(self, *args):
        self._refuse()

    @web.authenticated
    @authorized
    async def post(self, *args):
        self._refuse()

    @web.authenticated
    @authorized
    async def put(self, *args):
        self._refuse()

    @web.authenticated
    @authorized
    async def patch(self, *args):
        self._refuse()

    @web.authenticated
    @authorized
    async def delete(self, *args):
        self._refuse()


class UnknownAPIRoute(_UnknownRoute, MLXAPIHandler):
    pass


class UnknownOpenAIRoute(_UnknownRoute, OpenAIHandler):
    pass
