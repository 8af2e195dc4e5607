"""The shared base of every generating route (chat completions, completions, Messages,
Responses): one task per request runs the inference service into a queue; the reply is
either collected into one body or streamed as server-sent events, in the wire format of the
protocol's *renderer*. Keep-alives flow while waiting; a client that goes away cancels its
generation in the runner at once; server shutdown ends open streams with a final error event.

A renderer (see `protocols/`) has: `feed(event) -> [(event name | None, payload)]`,
`opening()` and `closing()` (the events around a stream), `body()` (the non-streamed reply),
`error_events(status, message, code, param)` (an in-band error once headers are out),
`keepalive` (raw SSE text) and `done_marker` (raw SSE text at the very end, or "").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any

from tornado.iostream import StreamClosedError

from ..errors import MLXError, TooManyRequests
from ..inference import images
from ..inference.pipeline import action_of
from ..inference.request import InferenceRequest, check_body_sizes, check_raw_message_count
from ..inference.service import Usage
from ..profiles import Applied, protocol_of
from .base import MLXAPIHandler, authorized, web
from .tasks import RequestTask, ServerShuttingDown

KEEPALIVE_SECONDS = 2.0


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


class InferenceHandler(RequestTask, MLXAPIHandler):
    """Its task (`RequestTask`) is the pump: a client that leaves cancels it at once (queued,
    prefilling or decoding); server shutdown ends it with a final error event."""

    keepalive_seconds = KEEPALIVE_SECONDS
    profile: Applied | None = None  # the profile the body named (apply_profile)

    counts_image_bytes = True  # its Content-Length counts against the user's image bytes in flight (base.py)

    @property
    def max_body_bytes(self) -> int:
        """The server's JSON limit, plus room for the images a body may carry (base64: 4/3 of 20 MB
        each), decided before the body is read; each image is checked later."""
        images_room = self.services.completions.image_limits.max_images * (images.MAX_IMAGE_BYTES * 4 // 3 + 64)
        return self.max_json_body_bytes + images_room

    @web.authenticated
    @authorized
    async def post(self, *args: str):
        self.services.in_flight.track_request(self)
        try:
            # From its parse to its end a request holds one of its user's places, and its body is
            # parsed off the event loop: a flood of big or bad bodies costs its sender, not others.
            place = await self._take_place()
            try:
                check_raw_message_count(self.request.body or b"")
                check_body_sizes(await self.json_body_off_loop())
                await self.apply_profile()
                await self.serve(*args)
            finally:
                place.__exit__(None, None, None)
        finally:
            self.services.in_flight.untrack_request(self)

    async def _take_place(self) -> contextlib.AbstractContextManager:
        """One of the user's places, held from the parse to the end (the caller exits it); a
        refusal comes before the body is read, and is audited as any refused request is."""
        place = self.services.limits.user_place(self.mlx_user["username"])
        try:
            place.__enter__()
        except TooManyRequests as exc:
            await self.services.audit.record(
                action_of(self.request.path), status="error", request_id=self.request_id,
                user=self.mlx_user["username"], client=self.actor.client, endpoint=self.request.path,
                error_type=exc.reason, **self.actor.context,
            )  # fmt: skip
            raise
        return place

    async def apply_profile(self) -> None:
        """A body whose `model` names a profile or an alias gets the profile's model and
        defaults (profiles.py) before the protocol reads it; the audit keeps the name asked for."""
        self.profile = await self.services.profiles.apply(self.json_body(), protocol_of(self.request.path))
        if self.profile is not None:
            self.actor = dataclasses.replace(
                self.actor, context={**self.actor.context, "requested_model": self.profile.asked}
            )

    @web.authenticated
    @authorized
    async def head(self, *args: str):
        """Clients probe a route before they use it (Claude Code: HEAD on its base URL)."""
        self.finish()

    async def serve(self, *args: str) -> None:  # pragma: no cover - each route defines it
        raise NotImplementedError

    async def finished(self, renderer: Any, usage: Usage) -> None:
        """Called once generation has ended, before the last reply bytes (e.g. to store it)."""

    async def generate(self, request: InferenceRequest | list[InferenceRequest], renderer: Any) -> None:
        """Run one request, or several one after another (a completions request's prompts:
        their events tagged with `index`, each its own runner request and audit record)."""
        requests = request if isinstance(request, list) else [request]
        if self.profile is not None:  # what only a profile sets
            for each in requests:
                each.context_length, each.tool_parser = self.profile.context_length, self.profile.tool_parser
        usages = renderer.usages = [Usage() for _ in requests]
        usage = renderer.usage = usages[0]
        events = self.services.completions.generate_all(
            self.actor, self.request.path, requests, self.request_id, usages
        )
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        # One task per request runs the service; the reply waits on its queue (no task per token).
        self._task = asyncio.ensure_future(_pump(events, queue))
        if self._client_gone or self._shutting_down:  # before the pump existed
            self._task.cancel()
        try:
            if requests[0].stream:
                await self._stream(queue, usage, renderer)
            else:
                await self._collect(queue, usage, renderer)
        except StreamClosedError:
            pass  # the client left: its request was cancelled and recorded as such
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task  # the service has written its audit record

    async def _next_event(self, queue: asyncio.Queue, keepalive: str | None) -> dict[str, Any] | None:
        """The next event, or None at the end; writes keep-alives while waiting; raises the
        service's error, or StreamClosedError once the client has left."""
        while True:
            try:
                async with asyncio.timeout(self.keepalive_seconds):
                    kind, value = await queue.get()
            except TimeoutError:
                if keepalive:
                    self.write(keepalive)
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

    async def _collect(self, queue: asyncio.Queue, usage: Usage, renderer: Any) -> None:
        while (event := await self._next_event(queue, None)) is not None:
            renderer.feed(event)
        if usage.ttft_ms is not None:  # the kernel client's footer shows it
            self.set_header("X-MLX-TTFT-Ms", f"{usage.ttft_ms:.1f}")
        await self.finished(renderer, usage)
        self.write_json(renderer.body())

    async def _stream(self, queue: asyncio.Queue, usage: Usage, renderer: Any) -> None:
        # Until the runner has accepted the request (admitted, model loaded, prompt valid),
        # errors still get a real status code; from then on headers go out and keep-alives flow.
        event = await self._next_event(queue, None)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        await self._send(renderer.opening())
        while event is not None:
            await self._send(renderer.feed(event))
            try:
                event = await self._next_event(queue, renderer.keepalive)
            except MLXError as exc:  # headers are gone: report in-band
                _, code, param = exc.message, exc.reason, getattr(exc, "param", None)
                await self._send(
                    renderer.error_events(exc.status_code, exc.message, getattr(exc, "code", None) or code, param)
                )
                self.finish()
                return
        await self.finished(renderer, usage)
        await self._send(renderer.closing())
        if renderer.done_marker:
            self.write(renderer.done_marker)
            await self.flush()
        self.finish()

    async def _send(self, events: list[tuple[str | None, dict[str, Any]]]) -> None:
        if not events:
            return
        for name, payload in events:
            prefix = f"event: {name}\n" if name else ""
            self.write(f"{prefix}data: {json.dumps(payload)}\n\n")
        await self.flush()
