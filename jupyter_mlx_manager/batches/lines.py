"""One batch line answered as its route would answer it, without HTTP: the route's own parser,
the one serving pipeline at batch priority, the route's own non-streamed reply (a batch line
never streams, and its Responses are not stored)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from ..auth import Actor
from ..budgets import BudgetExceeded
from ..errors import MLXError
from ..inference.embeddings import parse_embeddings
from ..inference.pipeline import Usage
from ..protocols import openai_chat, responses
from ..protocols.openai_chat import openai_error

if TYPE_CHECKING:
    from ..inference import InferenceService
    from ..inference.embeddings import EmbeddingService

ENDPOINT_PREFIX = "/mlx"  # batch lines are recorded under the route they stand for


class LineRunner:
    def __init__(self, completions: InferenceService, embeddings: EmbeddingService):
        self.completions, self.embeddings = completions, embeddings

    async def __call__(self, actor: Actor, url: str, body: dict[str, Any], request_id: str) -> tuple[int, dict]:
        """(status, body) of one line; a spent budget is raised (the batch waits for it)."""
        try:
            return 200, await self._answer(actor, url, {**body, "stream": False}, request_id)
        except BudgetExceeded:
            raise
        except MLXError as exc:
            code = getattr(exc, "code", None) or exc.reason
            return exc.status_code, openai_error(exc.status_code, exc.message, code, getattr(exc, "param", None))

    async def _answer(self, actor: Actor, url: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        endpoint = ENDPOINT_PREFIX + url
        if url == "/v1/embeddings":
            request = parse_embeddings(body)
            return await self.embeddings.embed(actor, endpoint, request, request_id, priority="batch")
        if url == "/v1/chat/completions":
            requests = [openai_chat.parse(body, "chat")]
            renderer: Any = openai_chat.ChatRenderer(
                "chatcmpl-" + request_id, int(time.time()), requests[0].model, False,
                logprobs=requests[0].logprobs is not None,
            )  # fmt: skip
        elif url == "/v1/completions":
            requests = openai_chat.parse_completions(body)
            renderer = openai_chat.CompletionRenderer(
                "cmpl-" + request_id, int(time.time()), requests[0].model, len(requests), False,
                logprobs=requests[0].logprobs is not None,
            )  # fmt: skip
        else:
            requests = [responses.parse({**body, "store": False}, [])]
            renderer = responses.ResponsesRenderer("resp_" + request_id, body, requests[0])
        renderer.usages = [Usage() for _ in requests]
        renderer.usage = renderer.usages[0]
        events = self.completions.generate_all(actor, endpoint, requests, request_id, renderer.usages, priority="batch")
        async with contextlib.aclosing(events):
            async for event in events:
                renderer.feed(event)
        return renderer.body()
