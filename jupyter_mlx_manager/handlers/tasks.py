"""The plumbing every inference route shares: its work runs as one task, which a client that
goes away cancels at once (in the runner too: a queued request leaves the queue) and which
server shutdown ends with a 503 (or, once a stream has started, a final error event)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from ..errors import MLXError


class ServerShuttingDown(MLXError):
    status_code = 503
    reason = "server_shutting_down"


class RequestTask:
    """A mixin for handlers whose request is one task (`run_task`)."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._task: asyncio.Task | None = None
        self._client_gone = False  # before prepare(): a client may leave at any time
        self._shutting_down = False

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._task is not None:
            self._task.cancel()

    def end_for_shutdown(self) -> None:
        self._shutting_down = True
        if self._task is not None:
            self._task.cancel()

    async def run_task(self, work: Coroutine[Any, Any, Any]) -> Any:
        """The result of `work`, or None when the client left (its request was cancelled and
        recorded as such); ServerShuttingDown when the server is stopping."""
        self.services.in_flight.track_request(self)
        try:
            self._task = asyncio.ensure_future(work)
            if self._client_gone or self._shutting_down:
                self._task.cancel()
            try:
                return await self._task
            except asyncio.CancelledError:
                if self._shutting_down:
                    raise ServerShuttingDown("the server is shutting down; try again when it is back") from None
                return None
        finally:
            self.services.in_flight.untrack_request(self)
