"""Admission of inference requests: per-user concurrency, per-model decoding slots and queue.

A request is admitted in two steps, both before it reaches a runner:

1. its user may have at most `max_requests_per_user` requests in flight (queued ones count);
   beyond it → 429 `too_many_requests` with `Retry-After`;
2. its model decodes at most `max_batch_size` requests together; later ones wait in that
   model's queue in arrival order, at most `max_queued_requests` of them; beyond it → 503
   `server_busy` with `Retry-After`.

Lines of background batches (`priority="batch"`) come last: they take no place of their user
(their worker bounds them), hold at most `batch_slots` of a model's slots, and wait in a queue
of their own that is served only when no interactive request is waiting.

A waiting request whose client goes away is cancelled, and so leaves the queue at once. A
slot is handed straight to the next waiter when a request ends, so no request can jump the
queue between the two.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from ..errors import MLXError, TooManyRequests
from ..models.ids import model_key

RETRY_AFTER_SECONDS = 1
# The user whose place the running request holds (tasks it starts inherit it).
_place_of: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlx_user_place", default=None)


class ServerBusy(MLXError):
    """A model's queue is full: a polite refusal (the SDKs retry it after `Retry-After`)."""

    status_code = 503
    reason = "server_busy"


@dataclass
class _ModelSlots:
    decoding: int = 0  # every request holding a slot, batch lines included
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    batch_decoding: int = 0
    batch_waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class RequestLimits:
    def __init__(
        self,
        max_requests_per_user: int = 8,
        max_batch_size: int = 16,
        max_queued_requests: int = 64,
        batch_slots: int | None = None,
    ):
        self.max_requests_per_user = max(0, max_requests_per_user)
        self.max_batch_size = max(1, max_batch_size)
        self.max_queued_requests = max(0, max_queued_requests)
        self.batch_slots = max(1, self.max_batch_size // 2 if batch_slots is None else batch_slots)
        self._per_user: collections.Counter[str] = collections.Counter()
        self._models: dict[str, _ModelSlots] = {}

    def queue_depth(self, model_id: str) -> int:
        slots = self._models.get(model_key(model_id))
        return len(slots.waiters) if slots else 0

    def models(self) -> list[str]:
        """Keys of the models with requests decoding or waiting."""
        return list(self._models)

    def status(self) -> dict[str, int]:
        return {
            "max_requests_per_user": self.max_requests_per_user,
            "max_batch_size": self.max_batch_size,
            "max_queued_requests": self.max_queued_requests,
            "batch_slots": self.batch_slots,
        }

    @contextlib.asynccontextmanager
    async def admit(self, username: str, model_id: str, priority: str = "interactive") -> AsyncIterator[None]:
        """Hold a per-user place and a decoding slot of `model_id` for one request (a batch
        line: a batch slot, and no place of its user's)."""
        key = model_key(model_id)  # ids differing in case are one model, with one queue
        batch = priority == "batch"
        with contextlib.nullcontext() if batch else self.user_place(username):
            await (self._acquire_batch(key) if batch else self._acquire(key))
            try:
                yield
            finally:
                self._release(key, batch)

    @contextlib.contextmanager
    def user_place(self, username: str) -> Iterator[None]:
        """One of the user's `max_requests_per_user` places (for work that needs no runner
        slot too, such as counting tokens). A request holds one place from its parse to its
        end: work it starts (in this context) takes no second one."""
        if _place_of.get() == username:
            yield
            return
        if self.max_requests_per_user and self._per_user[username] >= self.max_requests_per_user:
            raise TooManyRequests(
                f"you have {self._per_user[username]} requests in flight, the most this server allows per user "
                f"(c.MLXManager.max_requests_per_user = {self.max_requests_per_user}); wait for one to finish",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._per_user[username] += 1
        held = _place_of.set(username)
        try:
            yield
        finally:
            _place_of.reset(held)
            self._per_user[username] -= 1
            if not self._per_user[username]:
                del self._per_user[username]

    async def _acquire(self, model_id: str) -> None:
        slots = self._models.setdefault(model_id, _ModelSlots())
        if slots.decoding < self.max_batch_size and not slots.waiters:
            slots.decoding += 1
            return
        if len(slots.waiters) >= self.max_queued_requests:
            raise ServerBusy(
                f"{model_id} is decoding {slots.decoding} requests and {len(slots.waiters)} more are waiting, "
                f"the most its queue holds (c.MLXManager.max_queued_requests = {self.max_queued_requests}); "
                "try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        await self._wait(model_id, slots.waiters, batch=False)

    async def _acquire_batch(self, model_id: str) -> None:
        slots = self._models.setdefault(model_id, _ModelSlots())
        if self._batch_may_start(slots) and not slots.batch_waiters:
            slots.decoding += 1
            slots.batch_decoding += 1
            return
        await self._wait(model_id, slots.batch_waiters, batch=True)

    def _batch_may_start(self, slots: _ModelSlots) -> bool:
        return slots.decoding < self.max_batch_size and not slots.waiters and slots.batch_decoding < self.batch_slots

    async def _wait(self, model_id: str, queue: collections.deque[asyncio.Future[None]], batch: bool) -> None:
        granted = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            await granted  # a release hands its slot over (decoding stays counted)
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(model_id, batch)  # the slot arrived as the client left: pass it on
            else:
                with contextlib.suppress(ValueError):  # a release may have popped it just now
                    queue.remove(granted)
                self._forget_if_idle(model_id)
            raise

    def _release(self, model_id: str, batch: bool = False) -> None:
        """Hand the slot to the next interactive waiter, else to the next batch line its share
        allows, else free it."""
        slots = self._models[model_id]
        if batch:
            slots.batch_decoding -= 1
        if _grant(slots.waiters):
            return
        slots.decoding -= 1
        if self._batch_may_start(slots) and _grant(slots.batch_waiters):
            slots.decoding += 1
            slots.batch_decoding += 1
            return
        self._forget_if_idle(model_id)

    def _forget_if_idle(self, model_id: str) -> None:
        slots = self._models.get(model_id)
        if slots is not None and not slots.decoding and not slots.waiters and not slots.batch_waiters:
            del self._models[model_id]


def _grant(queue: collections.deque[asyncio.Future[None]]) -> bool:
    """Wake the first waiter still waiting; False when there is none."""
    while queue:
        waiter = queue.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False
