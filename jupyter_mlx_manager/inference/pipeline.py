"""The one serving pipeline every inference-like request goes through.

    admit (the user's token budgets, concurrency, the model's decoding slots and queue)
      → resolve the backend → hold the model → run one operation on it
      → map its error events to HTTP errors → classify the outcome → one audit record

Chat, completions, Messages, Responses, embeddings and audio differ only in the operation they
run and in how they read its events (`service.py`, `embeddings.py`, `audio.py`); limits, the
backend choice, the failure classes, error scrubbing and the audit are decided here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..audit import AuditLog
from ..auth import Actor
from ..auth.users import is_admin
from ..errors import MLXError, scrub_paths
from ..pool import RunnerCrashed
from .limits import RequestLimits
from .request import InvalidParam

if TYPE_CHECKING:
    from ..backends import Backends, HeldModel
    from ..budgets import Budgets


def action_of(endpoint: str) -> str:
    """The audit's action of a route: what follows `/v1/`, dotted (`chat.completions`)."""
    return endpoint.rsplit("/v1/", 1)[-1].replace("/", ".")


class ServingFailed(MLXError):
    """The model's side failed (a runner error or crash): not the client's fault."""

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
    audio_seconds: float | None = None  # transcription: seconds in; speech: seconds out
    text: list[str] = field(default_factory=list)

    def as_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def take(self, event: dict[str, Any]) -> None:
        """What a `started`, `text`/`reasoning` or `done` event says of the request's usage."""
        kind = event["ev"]
        if kind == "started":
            self.prompt_tokens = event.get("prompt_tokens", self.prompt_tokens)
            self.cached_tokens = event.get("cached_tokens", self.cached_tokens)
        elif kind in ("text", "reasoning"):
            # Kept current, so a request cut short still records what it used.
            self.completion_tokens = event.get("completion_tokens", self.completion_tokens)
        elif kind == "done":
            self.finish_reason = event.get("finish_reason")
            # A remote upstream reports its prompt tokens only at the end.
            self.prompt_tokens = int(event.get("prompt_tokens") or self.prompt_tokens)
            self.cached_tokens = int(event.get("cached_tokens") or self.cached_tokens)
            self.completion_tokens = int(event.get("completion_tokens") or self.completion_tokens)
            self.ttft_ms = event.get("ttft_ms")
            self.stop_sequence = event.get("stop_sequence")
            self.reasoning_tokens = event.get("reasoning_tokens") or 0


@dataclass
class Call:
    """One request inside the pipeline: the held model and what the audit will record."""

    actor: Actor
    model: HeldModel
    usage: Usage
    content: Callable[[], str] | None = None  # the recorded prompt and reply, where recording is on

    async def events(
        self, stream: AsyncIterator[dict[str, Any]], param: Callable[[str | None], str | None]
    ) -> AsyncIterator[dict[str, Any]]:
        """The operation's events with its usage taken, and its `error` event raised as the
        HTTP error it is: the runner's invalid-request errors as 400s naming the client's own
        field (`param` maps the runner's name to it), anything else as a 500 whose text only
        admins see unscrubbed. Closing this closes (cancels) the operation."""
        async with contextlib.aclosing(stream):
            async for event in stream:
                if event["ev"] == "error":
                    code = event.get("code")
                    if event["type"] == "invalid_request_error":
                        raise InvalidParam(event["message"], param(event.get("param")), code)
                    message = event["message"] if is_admin(self.actor.user) else scrub_paths(event["message"])
                    raise ServingFailed(message, reason=code or "server_error")
                self.usage.take(event)
                yield event


class ServingPipeline:
    def __init__(self, backends: Backends, audit: AuditLog, limits: RequestLimits, budgets: Budgets | None = None):
        self.backends = backends
        self.audit = audit
        self.limits = limits
        self.budgets = budgets

    @contextlib.asynccontextmanager
    async def serve(
        self,
        actor: Actor,
        endpoint: str,
        model_id: str,
        request_id: str,
        *,
        kinds: tuple[str, ...],
        action: str | None = None,
        keep_alive: float | None = None,
        usage: Usage | None = None,
        priority: str = "interactive",
    ) -> AsyncIterator[Call]:
        """A `Call` on the held model for the body of the `async with`; one audit record
        whatever happens (`action` defaults to the route after `/v1/`, dotted), counting what
        the call's `usage` holds (a fresh one, or the caller's to read as it fills). Batch
        lines come in with `priority="batch"` (see `RequestLimits`).

        Raises MLXError subclasses for what goes wrong: 404 unknown model, 400 wrong kind or
        bad request for this model, 429/503 over a limit or budget, 500 runner failure or crash, 502
        upstream unavailable."""
        started = time.monotonic()
        usage = usage or Usage()
        status, error_type, backend_name, audited_model = "error", None, "local", model_id
        call: Call | None = None
        try:
            backend = self.backends.resolve(model_id)
            backend_name = backend.name
            if self.budgets is not None:
                await self.budgets.check(actor.user["username"], actor.groups)
            async with (
                self.limits.admit(actor.user["username"], model_id, priority),
                backend.hold(model_id, user=actor.user, kinds=kinds, keep_alive=keep_alive) as model,
            ):
                audited_model = model.model_id  # one spelling per model, so case variants count as one
                call = Call(actor, model, usage)
                yield call
            status = "cancelled" if usage.finish_reason == "cancelled" else "ok"
        except (asyncio.CancelledError, GeneratorExit):
            status, error_type = "cancelled", "client_disconnected"
            raise
        except RunnerCrashed as exc:
            error_type = "runner_crashed"
            raise ServingFailed(str(exc), reason="runner_crashed") from None
        except MLXError as exc:
            error_type = getattr(exc, "code", None) or exc.reason
            raise
        finally:
            await asyncio.shield(
                self.audit.record(
                    action or action_of(endpoint),
                    status=status,
                    request_id=request_id,
                    user=actor.user["username"],
                    client=actor.client,
                    endpoint=endpoint,
                    model=audited_model,
                    prompt_tokens=usage.prompt_tokens,
                    cached_tokens=usage.cached_tokens,
                    completion_tokens=usage.completion_tokens,
                    ttft_ms=usage.ttft_ms,
                    duration_ms=(time.monotonic() - started) * 1000,
                    error_type=error_type,
                    backend=backend_name,
                    audio_seconds=usage.audio_seconds,
                    content=call.content() if call is not None and call.content is not None else None,
                    **actor.context,
                )
            )
