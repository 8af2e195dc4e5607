"""Generation (chat completions, completions, Anthropic Messages, OpenAI Responses) on the one
serving pipeline.

Every protocol comes here with the same `InferenceRequest`; none of them touches limits, the
backend, the pool or the audit. What is particular to generation: images are decoded and
checked before a model is held, the request's `keep_alive` travels to the pool, a model of a
generative kind is required (a vision model when the request has images), and the prompt and
reply are recorded when `audit_record_content` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..auth import Actor
from ..models.kinds import GENERATIVE_KINDS
from .images import ImageLimits
from .pipeline import ServingPipeline, Usage
from .request import InferenceRequest

if TYPE_CHECKING:
    from ..backends import Backends


class InferenceService:
    def __init__(
        self,
        pipeline: ServingPipeline,
        max_tokens_limit: int,
        record_content: bool = False,
        image_limits: ImageLimits | None = None,
    ):
        self.pipeline = pipeline
        self.max_tokens_limit = max_tokens_limit
        self.record_content = record_content
        self.image_limits = image_limits or ImageLimits()

    @property
    def backends(self) -> Backends:
        return self.pipeline.backends

    async def _check_images(self, request: InferenceRequest) -> None:
        """Decode and check a request's images (up to 8 × 20 MB of base64) off the event loop."""
        if request.has_images():
            await asyncio.get_running_loop().run_in_executor(None, request.check_images, self.image_limits)

    async def count_tokens(self, actor: Actor, request: InferenceRequest) -> int:
        """Prompt tokens of a request, as its backend counts them, without generating."""
        request.within(self.max_tokens_limit)  # its command is complete, as for a generation
        backend = self.backends.resolve(request.model)
        await self._check_images(request)
        with self.pipeline.limits.user_place(actor.user["username"]):  # a flood of counts is bounded like requests
            return await backend.count_tokens(request)

    async def generate(
        self,
        actor: Actor,
        endpoint: str,
        request: InferenceRequest,
        request_id: str,
        usage: Usage,
        priority: str = "interactive",
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the backend's `started`, `text`, `reasoning` and `tool_call` events; fills
        `usage` as it goes (see `ServingPipeline.serve` for the errors raised)."""
        request.within(self.max_tokens_limit)
        await self._check_images(request)
        kinds = ("vision",) if request.has_images() else GENERATIVE_KINDS  # images: a vision model only
        async with self.pipeline.serve(
            actor,
            endpoint,
            request.model,
            request_id,
            kinds=kinds,
            keep_alive=request.keep_alive,
            usage=usage,
            priority=priority,
        ) as call:
            if self.record_content:
                call.content = lambda: _content(request, usage)
            async for event in call.events(call.model.generate(request, request_id), request.param):
                if event["ev"] == "done":
                    continue
                if self.record_content and event["ev"] == "text":
                    usage.text.append(event["text"])
                yield event

    async def generate_all(
        self,
        actor: Actor,
        endpoint: str,
        requests: list[InferenceRequest],
        request_id: str,
        usages: list[Usage],
        priority: str = "interactive",
    ) -> AsyncIterator[dict[str, Any]]:
        """Several requests one after another (a completions request's prompts): each its own
        runner request and audit record (`<request_id>.<n>`), their events tagged with `index`."""
        for index, (request, usage) in enumerate(zip(requests, usages, strict=True)):
            events = self.generate(
                actor, endpoint, request, f"{request_id}.{index}" if index else request_id, usage, priority
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield {**event, "index": index} if len(requests) > 1 else event


def _content(request: InferenceRequest, usage: Usage) -> str:
    """The prompt and the reply as the audit records them (`audit_record_content`)."""
    prompt = request.template_messages() if request.kind == "chat" else request.prompt  # as the runner gets it
    return json.dumps({"prompt": prompt, "completion": "".join(usage.text)})
