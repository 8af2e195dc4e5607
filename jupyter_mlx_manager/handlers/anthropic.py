"""`mlx/v1/messages` and `mlx/v1/messages/count_tokens`: the Anthropic Messages API, for the
unmodified `anthropic` SDK (`base_url=<server>/mlx`, the API token as `x-api-key`, which
handlers/base.py accepts like a bearer token). Errors use Anthropic's envelope and types."""

from __future__ import annotations

import json
from typing import Any

from ..protocols.anthropic import MessagesRenderer, anthropic_error, parse
from .base import MLXAPIHandler, authorized, web
from .inference import InferenceHandler


class AnthropicErrors:
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """`{"type": "error", "error": {"type", "message"}}`: the SDK maps the status to its
        exception classes (NotFoundError, AuthenticationError, RateLimitError, …)."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message, _, _ = self.error_details(exc)
        self.finish(json.dumps(anthropic_error(status_code, message)))


class MessagesHandler(AnthropicErrors, InferenceHandler):
    async def serve(self) -> None:
        request = parse(self.json_body())
        await self.generate(request, MessagesRenderer("msg_" + self.request_id, request.model))


class CountTokensHandler(AnthropicErrors, MLXAPIHandler):
    max_body_bytes = None  # the server's JSON limit (c.MLXManager.max_body_mb)

    @web.authenticated
    @authorized
    async def post(self):
        body = await self.json_body_off_loop()
        await self.services.profiles.apply(body, "messages")  # counted for the model that would answer
        request = parse(body, count_only=True)
        self.write_json({"input_tokens": await self.services.completions.count_tokens(self.actor, request)})
