"""`mlx/v1/responses` (+ `GET` / `DELETE mlx/v1/responses/{id}`): the OpenAI Responses API.

Responses are stored per user (inference/stored.py) unless `store: false`, so
`previous_response_id` continues a conversation; another user's id is a 404, as a
`previous_response_id` too. Errors use OpenAI's envelope.
"""

from __future__ import annotations

from typing import Any

from ..errors import NotFound
from ..inference.request import InvalidParam
from ..protocols.models import MAX_ID
from ..protocols.responses import ResponsesRenderer, input_items, parse, previous_id
from .base import MLXAPIHandler, authorized, web
from .inference import InferenceHandler
from .openai import OpenAIErrors


class ResponseNotFound(NotFound):
    reason = "not_found"

    def __init__(self, response_id: str, param: str | None = None):
        super().__init__(f"no response with id {response_id!r} (responses are kept for a while, per user)")
        self.param = param


async def _history(handler: MLXAPIHandler, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of the conversation a `previous_response_id` continues (the user's own)."""
    previous = previous_id(body)
    if previous is None:
        return []
    found = await handler.services.responses.get(handler.mlx_user["username"], previous)
    if found is None:
        raise ResponseNotFound(previous, "previous_response_id")
    return found[1]


class ResponsesHandler(OpenAIErrors, InferenceHandler):
    async def serve(self) -> None:
        body = self.json_body()
        history = await _history(self, body)
        request = parse(body, history)
        self._history = history + [dict(i) for i in input_items(body)]
        self._store = body.get("store", True) is not False
        await self.generate(request, ResponsesRenderer("resp_" + self.request_id, body, request))

    async def finished(self, renderer: ResponsesRenderer, usage) -> None:
        final = renderer.final()
        if self._store:
            await self.services.responses.save(self.mlx_user["username"], final, self._history + final["output"])


class InputTokensHandler(OpenAIErrors, MLXAPIHandler):
    """`POST mlx/v1/responses/input_tokens`: the prompt tokens a Responses body would use
    (instructions, input, tools, a previous response's conversation), counted as the runner
    counts them, without generating."""

    max_body_bytes = None  # the server's JSON limit (c.MLXManager.max_body_mb)

    @web.authenticated
    @authorized
    async def post(self):
        body = await self.json_body_off_loop()
        await self.services.profiles.apply(body, "responses")  # counted for the model that would answer
        request = parse(body, await _history(self, body))
        count = await self.services.completions.count_tokens(self.actor, request)
        self.write_json({"object": "response.input_tokens", "input_tokens": count})


class ResponseHandler(OpenAIErrors, MLXAPIHandler):
    async def _find(self, response_id: str) -> dict[str, Any]:
        if len(response_id) > MAX_ID:
            raise InvalidParam("not a response id", "response_id")
        found = await self.services.responses.get(self.mlx_user["username"], response_id)
        if found is None:
            raise ResponseNotFound(response_id)
        return found[0]

    @web.authenticated
    @authorized
    async def get(self, response_id: str):
        self.write_json(await self._find(response_id))

    @web.authenticated
    @authorized
    async def delete(self, response_id: str):
        if len(response_id) > MAX_ID or not await self.services.responses.delete(
            self.mlx_user["username"], response_id
        ):
            raise ResponseNotFound(response_id)
        self.write_json({"id": response_id, "object": "response", "deleted": True})
