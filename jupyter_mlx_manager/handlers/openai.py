"""`mlx/v1/…`: the OpenAI-compatible API (models, chat completions, completions).

Streaming answers are server-sent events with a flush per event, `: keepalive` comments
while the prompt is being processed, and `data: [DONE]` at the end. A client that goes
away cancels its generation in the runner at once (handlers/inference.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ..protocols.openai_chat import ERROR_TYPES, ChatRenderer, openai_error, parse
from .base import MLXAPIHandler, authorized, web
from .inference import KEEPALIVE_SECONDS, InferenceHandler, ServerShuttingDown

__all__ = [
    "ERROR_TYPES",
    "KEEPALIVE_SECONDS",
    "ChatCompletionsHandler",
    "CompletionsHandler",
    "ModelsHandler",
    "OpenAIErrors",
    "OpenAIHandler",
    "ServerShuttingDown",
    "openai_error",
]


class OpenAIErrors:
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors use OpenAI's envelope, so the SDKs raise the right exception class."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message, reason, param = self.error_details(exc)
        self.finish(json.dumps(openai_error(status_code, message, getattr(exc, "code", None) or reason, param)))


class OpenAIHandler(OpenAIErrors, MLXAPIHandler):
    max_body_bytes = 4 * 1024 * 1024


class ModelsHandler(OpenAIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        ids = await asyncio.get_running_loop().run_in_executor(None, self.mlx.catalog.local_ids)
        loaded = {m.model_id for m in self.mlx.pool.loaded_models()}
        self.write_json(
            {
                "object": "list",
                "data": [
                    {"id": i, "object": "model", "created": 0, "owned_by": "local", "loaded": i in loaded} for i in ids
                ]
                + await self.mlx.remote.model_entries(),
            }
        )


class _CompletionHandler(OpenAIErrors, InferenceHandler):
    kind = "chat"

    async def serve(self) -> None:
        request = parse(self.json_body(), self.kind, self.mlx.max_tokens_limit)
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        renderer = ChatRenderer(
            self.kind, prefix + self.request_id, int(time.time()), request.model, request.include_usage,
            logprobs=request.logprobs is not None,
        )  # fmt: skip
        await self.generate(request, renderer)


class ChatCompletionsHandler(_CompletionHandler):
    kind = "chat"


class CompletionsHandler(_CompletionHandler):
    kind = "completion"
