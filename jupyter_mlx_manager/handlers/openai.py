"""`mlx/v1/…`: the OpenAI-compatible API (models, chat completions, completions).

Streaming answers are server-sent events with a flush per event, `: keepalive` comments
while the prompt is being processed, and `data: [DONE]` at the end. A client that goes
away cancels its generation in the runner at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from tornado.iostream import StreamClosedError

from ..errors import MLXError
from ..openai_api.requests import parse
from ..openai_api.service import Usage
from .base import MLXAPIHandler, authorized, web

KEEPALIVE_SECONDS = 2.0
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
    409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error",
}  # fmt: skip


async def _pump(events, queue: asyncio.Queue) -> None:
    """Run one request's event stream into `queue`: ("event", e)… then ("end", None), or
    ("error", exc), or ("gone", None) when the client's departure cancelled it."""
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                queue.put_nowait(("event", event))
        queue.put_nowait(("end", None))
    except asyncio.CancelledError:
        queue.put_nowait(("gone", None))
        raise
    except Exception as exc:  # MLXError for what the client should hear; anything else is a 500
        queue.put_nowait(("error", exc))


class ServerShuttingDown(MLXError):
    status_code = 503
    reason = "server_shutting_down"


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }


class OpenAIHandler(MLXAPIHandler):
    max_body_bytes = 4 * 1024 * 1024

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors use OpenAI's envelope, so the SDKs raise the right exception class."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message, reason, param = self.error_details(exc)
        self.finish(json.dumps(openai_error(status_code, message, getattr(exc, "code", None) or reason, param)))


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
                ],
            }
        )


class _CompletionHandler(OpenAIHandler):
    kind = "chat"
    object_name = "chat.completion"

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._pump: asyncio.Task | None = None
        self._client_gone = False  # before prepare(): a client may leave at any time
        self._shutting_down = False

    def on_connection_close(self) -> None:
        """A client that leaves cancels its request at once (queued, prefilling or decoding)."""
        self._client_gone = True
        if self._pump is not None:
            self._pump.cancel()

    def end_for_shutdown(self) -> None:
        """The server is stopping: end this request now with a final error event."""
        self._shutting_down = True
        if self._pump is not None:
            self._pump.cancel()

    @web.authenticated
    @authorized
    async def post(self):
        self.mlx.track_request(self)
        try:
            await self._serve()
        finally:
            self.mlx.untrack_request(self)

    async def _serve(self) -> None:
        request = parse(self.json_body(), self.kind, self.mlx.max_tokens_limit)
        usage = Usage()
        self.completion_id = ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.request_id
        self.created = int(time.time())
        self.model = request.model
        events = self.mlx.completions.generate(self.actor, self.request.path, request, self.request_id, usage)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        # One task per request runs the service; the reply waits on its queue (no task per token).
        self._pump = asyncio.ensure_future(_pump(events, queue))
        if self._client_gone or self._shutting_down:  # before the pump existed
            self._pump.cancel()
        try:
            if request.stream:
                await self._stream(queue, usage, request.include_usage)
            else:
                await self._collect(queue, usage)
        except StreamClosedError:
            pass  # the client left: its request was cancelled and recorded as such
        finally:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump  # the service has written its audit record

    async def _next_event(self, queue: asyncio.Queue, streaming: bool) -> dict[str, Any] | None:
        """The next event, or None at the end; writes keep-alives while waiting; raises the
        service's error, or StreamClosedError once the client has left."""
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    kind, value = await queue.get()
            except TimeoutError:
                if streaming:
                    self.write(": keepalive\n\n")
                    await self.flush()
                continue
            if kind == "event":
                return value
            if kind == "end":
                return None
            if kind == "gone":
                if self._shutting_down:
                    raise ServerShuttingDown("the server is shutting down; try again when it is back")
                raise StreamClosedError()
            raise value

    async def _collect(self, queue: asyncio.Queue, usage: Usage) -> None:
        text, tool_calls = [], []
        while (event := await self._next_event(queue, streaming=False)) is not None:
            if event["ev"] == "text":
                text.append(event["text"])
            elif event["ev"] == "tool_call":
                tool_calls.append(self._tool_call(event["call"]))
        if usage.ttft_ms is not None:  # the kernel client's footer shows it
            self.set_header("X-MLX-TTFT-Ms", f"{usage.ttft_ms:.1f}")
        self.write_json(self._final_body("".join(text), tool_calls, usage))

    async def _stream(self, queue: asyncio.Queue, usage: Usage, include_usage: bool) -> None:
        # Until the runner has accepted the request (admitted, model loaded, prompt valid),
        # errors still get a real status code; from then on headers go out and keep-alives flow.
        first = await self._next_event(queue, streaming=False)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        await self._send(self._chunk({"role": "assistant", "content": ""} if self.kind == "chat" else {"text": ""}))
        event, tool_index = first, 0
        while event is not None:
            if event["ev"] == "text":
                await self._send(
                    self._chunk({"content": event["text"]} if self.kind == "chat" else {"text": event["text"]})
                )
            elif event["ev"] == "tool_call":
                call = {"index": tool_index, **self._tool_call(event["call"])}
                tool_index += 1
                await self._send(self._chunk({"tool_calls": [call]}))
            try:
                event = await self._next_event(queue, streaming=True)
            except MLXError as exc:  # headers are gone: report in-band, as OpenAI does
                await self._send(openai_error(exc.status_code, exc.message, exc.reason))
                self.finish()
                return
        await self._send(self._chunk({} if self.kind == "chat" else {"text": ""}, usage.finish_reason))
        if include_usage:
            await self._send({**self._envelope(), "choices": [], "usage": usage.as_openai()})
        self.write("data: [DONE]\n\n")
        await self.flush()
        self.finish()

    async def _send(self, payload: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(payload)}\n\n")
        await self.flush()

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": self.object_name + (".chunk" if self.kind == "chat" else ""),
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta.get("text", ""), "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope(), "choices": [choice]}

    @staticmethod
    def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }

    def _final_body(self, text: str, tool_calls: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        if self.kind == "chat":
            message = {"role": "assistant", "content": text or (None if tool_calls else "")}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "finish_reason": usage.finish_reason, "logprobs": None}
            envelope = {**self._envelope(), "object": "chat.completion"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": usage.finish_reason, "logprobs": None}
            envelope = self._envelope()
        return {**envelope, "choices": [choice], "usage": usage.as_openai()}


class ChatCompletionsHandler(_CompletionHandler):
    kind = "chat"
    object_name = "chat.completion"


class CompletionsHandler(_CompletionHandler):
    kind = "completion"
    object_name = "text_completion"
