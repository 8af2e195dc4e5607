"""Server-sent events of long work (downloads, jobs): `?token=<ticket>` authenticates where an
EventSource cannot send headers; each event is a JSON object, `: keepalive` comments fill the
silences, and the last event carries `"final": true` (then the stream ends)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tornado.iostream import StreamClosedError

from .base import MLXAPIHandler, authorized, web


class EventStreamHandler(MLXAPIHandler):
    query_token_allowed = True
    retry_ms = 3000

    def on_connection_close(self) -> None:
        self._gone = True

    def events(self, *args: str) -> AsyncIterator[dict[str, Any] | None]:
        """The stream's events (None: nothing new, send a keep-alive); its first is awaited
        before any header goes out, so a missing record is a plain 404."""
        raise NotImplementedError

    @web.authenticated
    @authorized
    async def get(self, *args: str):
        self._gone = False
        events = self.events(*args)
        first = await events.__anext__()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.write(f"retry: {self.retry_ms}\n\n")
        try:
            event = first
            while True:
                self.write(": keepalive\n\n" if event is None else f"data: {json.dumps(event)}\n\n")
                await self.flush()
                if self._gone or (event is not None and event.get("final")):
                    break
                event = await events.__anext__()
        except (StreamClosedError, StopAsyncIteration):
            pass
        finally:
            await events.aclose()
        if not self._gone:
            self.finish()
