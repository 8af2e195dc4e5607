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

from ..models.inspection import context_length, read_json
from ..protocols.openai_chat import (
    ERROR_TYPES,
    ChatRenderer,
    CompletionRenderer,
    openai_error,
    parse,
    parse_completions,
)
from .base import MLXAPIHandler, allow_unauthenticated, authorized, web
from .inference import KEEPALIVE_SECONDS, InferenceHandler, ServerShuttingDown

__all__ = [
    "ERROR_TYPES",
    "KEEPALIVE_SECONDS",
    "ChatCompletionsHandler",
    "CompletionsHandler",
    "ModelsHandler",
    "OpenAIErrors",
    "OpenAIHandler",
    "ProbeHandler",
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
    max_body_bytes = None  # the server's JSON limit (c.MLXManager.max_body_mb)


class ProbeHandler(OpenAIHandler):
    """`HEAD mlx` and `HEAD mlx/v1`: the base URLs clients probe before use answer 200, with or
    without credentials (Claude Code 2.1 warms its connection with a bare `HEAD <base>`): the
    answer has no body and says only that the server is there, as any 401 would."""

    @allow_unauthenticated
    async def head(self):
        self.finish()


def _local_entries(catalog: Any, max_tokens_limit: int) -> list[dict[str, Any]]:
    """Every local model with the limits this server enforces for it: `context_length`
    (prompt + output, as the runner counts) and `max_output_tokens` (the server's limit, within
    the context), so clients (opencode, Claude Code) can size their compaction. Blocking."""
    entries = []
    for model_id in catalog.local_ids():
        entry = {"id": model_id, "object": "model", "created": 0, "owned_by": "local"}
        folder = catalog.resolve(model_id)
        if folder is not None:
            context = context_length(read_json(folder / "config.json"), read_json(folder / "tokenizer_config.json"))
            entry["context_length"] = context
            entry["max_output_tokens"] = max(1, min(max_tokens_limit, context - 1))
        entries.append(entry)
    return entries


class ModelsHandler(OpenAIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        entries = await asyncio.get_running_loop().run_in_executor(
            None, _local_entries, self.services.catalog, self.services.max_tokens_limit
        )
        loaded = {m.model_id for m in self.services.pool.loaded_models()}
        for entry in entries:
            entry["loaded"] = entry["id"] in loaded
        remote = await self.services.remote.model_entries()
        self.write_json({"object": "list", "data": entries + remote + self.services.profiles.entries()})


class ChatCompletionsHandler(OpenAIErrors, InferenceHandler):
    async def serve(self) -> None:
        request = parse(self.json_body(), "chat")
        renderer = ChatRenderer(
            "chatcmpl-" + self.request_id, int(time.time()), request.model, request.include_usage,
            logprobs=request.logprobs is not None,
        )  # fmt: skip
        await self.generate(request, renderer)


class CompletionsHandler(OpenAIErrors, InferenceHandler):
    async def serve(self) -> None:
        requests = parse_completions(self.json_body())
        first = requests[0]
        renderer = CompletionRenderer(
            "cmpl-" + self.request_id, int(time.time()), first.model, len(requests), first.include_usage,
            logprobs=first.logprobs is not None,
        )  # fmt: skip
        await self.generate(requests, renderer)
