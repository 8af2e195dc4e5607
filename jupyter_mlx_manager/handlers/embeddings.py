"""`POST mlx/v1/embeddings` (OpenAI's): a plain JSON reply, no stream.

The work runs as one task (`RequestTask`), so that a client that goes away cancels it in the
runner (between batches) and server shutdown ends it with a 503, as for the generating routes.
"""

from __future__ import annotations

from ..inference.embeddings import parse_embeddings
from .base import MLXAPIHandler, authorized, web
from .openai import OpenAIErrors
from .tasks import RequestTask


class EmbeddingsHandler(RequestTask, OpenAIErrors, MLXAPIHandler):
    max_body_bytes = None  # the server's JSON limit (c.MLXManager.max_body_mb): up to 2,048 inputs

    @web.authenticated
    @authorized
    async def post(self):
        request = parse_embeddings(self.json_body())
        reply = await self.run_task(
            self.services.embeddings.embed(self.actor, self.request.path, request, self.request_id)
        )
        if reply is not None:
            self.write_json(reply)
