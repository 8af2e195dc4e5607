"""`POST mlx/v1/embeddings` (OpenAI's): a plain JSON reply, no stream.

The work runs as one task, so that a client that goes away cancels it in the runner (between
batches) and server shutdown ends it with a 503, as for the generating routes.
"""

from __future__ import annotations

import asyncio

from ..inference.embeddings import parse_embeddings
from .base import MLXAPIHandler, authorized, web
from .inference import ServerShuttingDown
from .openai import OpenAIErrors


class EmbeddingsHandler(OpenAIErrors, MLXAPIHandler):
    max_body_bytes = 8 * 1024 * 1024  # up to 2,048 inputs

    def initialize(self, *args, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self._task: asyncio.Task | None = None
        self._shutting_down = False

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def end_for_shutdown(self) -> None:
        self._shutting_down = True
        if self._task is not None:
            self._task.cancel()

    @web.authenticated
    @authorized
    async def post(self):
        request = parse_embeddings(self.json_body())
        self.mlx.track_request(self)
        try:
            self._task = asyncio.ensure_future(
                self.mlx.embeddings.embed(self.actor, self.request.path, request, self.request_id)
            )
            if self._shutting_down:
                self._task.cancel()
            try:
                reply = await self._task
            except asyncio.CancelledError:
                if self._shutting_down:
                    raise ServerShuttingDown("the server is shutting down; try again when it is back") from None
                return  # the client left; its request was cancelled and recorded as such
            self.write_json(reply)
        finally:
            self.mlx.untrack_request(self)
