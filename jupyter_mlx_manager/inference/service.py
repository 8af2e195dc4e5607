"""Runs one inference request through limits and the pool, and records it in the audit trail.

Every protocol (chat completions, completions, Anthropic Messages, OpenAI Responses) comes
here with the same `InferenceRequest`; none of them touches limits, the pool or the audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..audit import AuditLog
from ..auth import Actor
from ..errors import BadRequest, MLXError, NotFound
from ..models.catalog import GENERATIVE_KINDS, is_admin, is_remote_id, scrub_paths
from ..pool import ModelPool, RunnerCrashed
from .images import ImageLimits
from .limits import RequestLimits
from .request import InferenceRequest, InvalidParam, check_token_ids
from .tokens import TokenCounter

if TYPE_CHECKING:
    from ..backends import RemoteBackend, RemoteBackends


class GenerationFailed(MLXError):
    status_code = 500
    reason = "server_error"


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    ttft_ms: float | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop string that ended it, when the runner says
    text: list[str] = field(default_factory=list)

    def as_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class InferenceService:
    def __init__(
        self,
        pool: ModelPool,
        audit: AuditLog,
        limits: RequestLimits | None = None,
        record_content: bool = False,
        remote: RemoteBackends | None = None,
        image_limits: ImageLimits | None = None,
    ):
        self.pool = pool
        self.audit = audit
        self.limits = limits or RequestLimits()
        self.record_content = record_content
        self.remote = remote
        self.image_limits = image_limits or ImageLimits()
        self.tokens = TokenCounter()

    async def _check_images(self, request: InferenceRequest) -> None:
        """Decode and check a request's images (up to 8 × 20 MB of base64) off the event loop."""
        if request.has_images():
            await asyncio.get_running_loop().run_in_executor(None, request.check_images, self.image_limits)

    async def count_tokens(self, actor: Actor, request: InferenceRequest) -> int:
        """Prompt tokens of a request, with the model's own tokenizer and chat template (no
        runner, no MLX: `tokenizers` in this process)."""
        if is_remote_id(request.model):
            raise BadRequest("token counting is not available for remote models", reason="not_supported_for_remote")
        await self._check_images(request)
        catalog = self.pool.catalog
        with self.limits.user_place(actor.user["username"]):  # a flood of counts is bounded like requests
            folder = await asyncio.get_running_loop().run_in_executor(None, catalog.resolve, request.model)
            if folder is None:
                raise NotFound(f"model {request.model} is not on this machine", reason="model_not_found")
            return await asyncio.get_running_loop().run_in_executor(None, self.tokens.count, folder, request.command())

    async def generate(
        self, actor: Actor, endpoint: str, request: InferenceRequest, request_id: str, usage: Usage
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the runner's `started`, `text`, `reasoning` and `tool_call` events (for a
        remote model, the same events translated from its upstream); fills `usage` as it goes.

        Raises MLXError subclasses for what goes wrong (404 unknown model, 400 bad request
        for this model, 429/503 over a limit, 500 runner crash, 502 upstream unavailable).
        Always writes one audit record, naming the backend (`local` or the remote's name).
        """
        started = time.monotonic()
        status, error_type, backend = "error", None, "local"
        await self._check_images(request)
        command = request.command()
        try:
            remote = self.remote.resolve(request.model) if self.remote else None
            backend = remote[0].name if remote else "local"
            async with (
                self.limits.admit(actor.user["username"], request.model),
                self._events(actor, request, command, request_id, remote) as events,
            ):
                async for event in events:
                    kind = event["ev"]
                    if kind == "started":
                        usage.prompt_tokens, usage.cached_tokens = event["prompt_tokens"], event["cached_tokens"]
                        yield event
                    elif kind == "error":
                        error_type = event.get("code") or event["type"]
                        if event["type"] == "invalid_request_error":
                            # The runner names our command's fields; the client hears its own.
                            raise InvalidParam(event["message"], request.param(event.get("param")), event.get("code"))
                        message = event["message"] if is_admin(actor.user) else scrub_paths(event["message"])
                        raise GenerationFailed(message, reason=event.get("code") or "server_error")
                    elif kind == "done":
                        usage.finish_reason = event["finish_reason"]
                        # A remote upstream reports its prompt tokens only at the end.
                        usage.prompt_tokens = event.get("prompt_tokens", usage.prompt_tokens)
                        usage.cached_tokens = event.get("cached_tokens", usage.cached_tokens)
                        usage.completion_tokens = event["completion_tokens"]
                        usage.ttft_ms = event.get("ttft_ms")
                        usage.stop_sequence = event.get("stop_sequence")
                        usage.reasoning_tokens = event.get("reasoning_tokens") or 0
                    else:
                        if kind in ("text", "reasoning"):
                            # Kept current, so a request cut short still records what it used.
                            usage.completion_tokens = event.get("completion_tokens", usage.completion_tokens)
                            if self.record_content and kind == "text":
                                usage.text.append(event["text"])
                        yield event
            status = "cancelled" if usage.finish_reason == "cancelled" else "ok"
        except (asyncio.CancelledError, GeneratorExit):
            status, error_type = "cancelled", "client_disconnected"
            raise
        except RunnerCrashed as exc:
            error_type = "runner_crashed"
            raise GenerationFailed(str(exc), reason="runner_crashed") from None
        except MLXError as exc:
            error_type = error_type or exc.reason
            raise
        finally:
            content = None
            if self.record_content:
                prompt = command.get("messages") or command.get("prompt")
                content = json.dumps({"prompt": prompt, "completion": "".join(usage.text)})
            await asyncio.shield(
                self.audit.record(
                    endpoint.rsplit("/v1/", 1)[-1].replace("/", "."),
                    status=status,
                    request_id=request_id,
                    user=actor.user["username"],
                    client=actor.client,
                    endpoint=endpoint,
                    model=request.model,
                    prompt_tokens=usage.prompt_tokens,
                    cached_tokens=usage.cached_tokens,
                    completion_tokens=usage.completion_tokens,
                    ttft_ms=usage.ttft_ms,
                    duration_ms=(time.monotonic() - started) * 1000,
                    error_type=error_type,
                    backend=backend,
                    content=content,
                    **actor.context,
                )
            )

    @contextlib.asynccontextmanager
    async def _events(
        self,
        actor: Actor,
        request: InferenceRequest,
        command: dict[str, Any],
        request_id: str,
        remote: tuple[RemoteBackend, str] | None,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """One request's event stream from its backend: the remote upstream, or the local
        runner held through the pool (loading the model if needed). Closed deterministically:
        a request that ends here never sends a late cancel, and a remote stream is closed."""
        if remote is not None:
            backend, upstream_id = remote
            async with contextlib.aclosing(backend.generate(request, upstream_id, request_id)) as events:
                yield events
            return
        kinds = ("vision",) if request.has_images() else GENERATIVE_KINDS  # images: a vision model only
        async with self.pool.use(request.model, request.keep_alive, user=actor.user, kinds=kinds) as model:
            check_token_ids(command, model.runner.info.get("vocab_size"))
            async with contextlib.aclosing(model.runner.generate(request_id, command)) as events:
                yield events
