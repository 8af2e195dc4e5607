"""Paths under `mlx/api` and `mlx/v1` that name no route: a JSON 404 in the area's envelope.

Without these, Jupyter answers with its HTML error page (for a POST: "403: '_xsrf' argument
missing"), which is what LiteLLM and the SDKs would then show users.
"""

from __future__ import annotations

from ..errors import NotFound
from .base import MLXAPIHandler, authorized, web
from .openai import OpenAIHandler


def _refusal():
    """A handler method that answers the JSON 404. Each HTTP method needs its own: `authorized`
    settles the action it checks (read, write) on its first call and keeps it."""

    @web.authenticated
    @authorized
    async def refuse(self, *args):
        raise NotFound(f"no such endpoint: {self.request.method} {self.request.path}", reason="unknown_route")

    return refuse


class _UnknownRoute:
    get = _refusal()
    post = _refusal()
    put = _refusal()
    patch = _refusal()
    delete = _refusal()


class UnknownAPIRoute(_UnknownRoute, MLXAPIHandler):
    pass


class UnknownOpenAIRoute(_UnknownRoute, OpenAIHandler):
    pass
