"""Argon2id password hashing, off the event loop (hashing takes tens of milliseconds).

The work is bounded: each `HashBudget` runs at most `workers` hashes at once on its own
threads and lets at most `max_waiting` more queue; beyond that a request is refused at once
(429 `auth_busy` with `Retry-After`) instead of waiting behind a flood. Logins and
registrations have separate budgets, so a registration flood cannot starve logins.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import TooManyRequests

_hasher = PasswordHasher()
# Verified when the user does not exist, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("not a real password")


class HashBudget:
    """A bounded queue of argon2 jobs: `workers` run at once, at most `max_waiting` wait."""

    def __init__(self, name: str, workers: int = 2, max_waiting: int = 32):
        self.name = name
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"mlx-argon2-{name}")
        self._lock = threading.Lock()
        self._pending = 0  # reserved, queued or running
        self._seconds_per_job = 0.1  # moving average, for Retry-After
        self.refused = 0

    @property
    def pending(self) -> int:
        return self._pending

    def reserve(self) -> _Slot:
        """Take a place synchronously, or raise 429 `auth_busy` when the queue is full."""
        with self._lock:
            if self._pending >= self.workers + self.max_waiting:
                self.refused += 1
                wait = max(1, math.ceil(self._seconds_per_job * (self._pending + 1) / self.workers))
                raise TooManyRequests(
                    f"the server is busy checking passwords; try again in {wait} s",
                    reason="auth_busy",
                    headers={"Retry-After": str(wait)},
                )
            self._pending += 1
        return _Slot(self)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.reserve() as slot:
            return await slot.run(fn, *args)

    def _done(self, seconds: float | None) -> None:
        with self._lock:
            self._pending -= 1
            if seconds is not None:
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * seconds


class _Slot:
    """One reserved place in a `HashBudget`; released when its job ends (or, if it never
    ran one, when the `with` block ends)."""

    def __init__(self, budget: HashBudget):
        self._budget = budget
        self._held = True

    def __enter__(self) -> _Slot:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._budget._done(None)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._held, "slot already used"
        self._held = False  # from now on the job releases the place when it ends
        budget = self._budget

        def job():
            started = time.monotonic()
            try:
                return fn(*args)
            finally:
                budget._done(time.monotonic() - started)

        try:
            future = budget._executor.submit(job)
        except BaseException:
            budget._done(None)
            raise
        # A job cancelled before it started never runs `job`, so release its place here.
        future.add_done_callback(lambda f: budget._done(None) if f.cancelled() else None)
        return await asyncio.wrap_future(future)


# Separate budgets: registrations get one thread, so logins keep most of the CPU in a flood.
LOGIN_BUDGET = HashBudget("login", workers=2, max_waiting=32)
REGISTER_BUDGET = HashBudget("register", workers=1, max_waiting=32)


def hash_password_sync(password: str) -> str:
    return _hasher.hash(password)


def verify_password_sync(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False
