"""In-memory limits for the unauthenticated endpoints: failed logins per (username, client
address), and registrations per client address. Both bound their memory (`max_keys`)."""

from __future__ import annotations

import math
import time
from collections import deque


class _Attempts:
    __slots__ = ("reported", "times")

    def __init__(self) -> None:
        self.times: deque[float] = deque()  # failed or still in-flight attempts, oldest first
        self.reported: float | None = None  # the throttle deadline whose refusal was audited


class LoginThrottle:
    """After `free_attempts` failures within `window` seconds, further attempts wait.

    The wait doubles with each further failure (from `base_delay`, capped at `max_delay`),
    and a successful login clears the record.

    An attempt is counted when it *starts* (`begin`, synchronous, before any password hash is
    awaited) and stays counted as a failure unless it succeeds (`succeeded`) or never reached
    the password check (`cancel`): so parallel guesses cannot all pass the check before the
    first of them fails. Refused attempts are not counted (they cost nothing).
    """

    def __init__(
        self,
        free_attempts: int = 5,
        window: float = 900,
        base_delay: float = 30,
        max_delay: float = 900,
        max_keys: int = 10000,
    ):
        self.free_attempts = free_attempts
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys  # bounds memory under a spray of made-up names and addresses
        self._records: dict[tuple[str, str], _Attempts] = {}

    def begin(self, username: str, client: str) -> int:
        """Start an attempt: 0 → go ahead (the attempt now counts as a failure until
        `succeeded` or `cancel`), else the seconds to wait (and nothing is counted)."""
        key = (username.lower(), client)
        record = self._recent(key)
        deadline = self._deadline(record)
        if deadline is not None:
            wait = _seconds_until(deadline)
            if wait:
                return wait
        self._store(key, record).times.append(time.monotonic())
        return 0

    def report_refusal(self, username: str, client: str) -> bool:
        """True once per throttle period of (username, client): whether a refusal now is worth
        an audit row. The period changes when a further failure moves the deadline."""
        record = self._records.get((username.lower(), client))
        deadline = None if record is None else self._deadline(record)
        if record is None or deadline is None or record.reported == deadline:
            return False
        record.reported = deadline
        return True

    def failed(self, username: str, client: str) -> None:
        """Count a failure that did not go through `begin`."""
        key = (username.lower(), client)
        self._store(key, self._recent(key)).times.append(time.monotonic())

    def cancel(self, username: str, client: str) -> None:
        """An attempt from `begin` never reached the password check: stop counting it."""
        record = self._records.get((username.lower(), client))
        if record is not None and record.times:
            record.times.pop()
            if not record.times:
                del self._records[(username.lower(), client)]

    def succeeded(self, username: str, client: str) -> None:
        self._records.pop((username.lower(), client), None)

    def failures(self, username: str, client: str) -> int:
        """Failed and in-flight attempts inside the window (for tests and diagnostics)."""
        return len(self._recent((username.lower(), client)).times)

    def __len__(self) -> int:
        return len(self._records)

    def _deadline(self, record: _Attempts) -> float | None:
        extra = len(record.times) - self.free_attempts
        if extra < 0:
            return None
        return record.times[-1] + min(self.base_delay * 2**extra, self.max_delay)

    def _store(self, key: tuple[str, str], record: _Attempts) -> _Attempts:
        if key not in self._records and len(self._records) >= self.max_keys:
            del self._records[next(iter(self._records))]  # the oldest entry
        self._records[key] = record
        return record

    def _recent(self, key: tuple[str, str]) -> _Attempts:
        """Attempts inside the window; forgets keys with none so memory stays bounded."""
        record = self._records.get(key) or _Attempts()
        horizon = time.monotonic() - self.window
        while record.times and record.times[0] < horizon:
            record.times.popleft()
        if not record.times:
            self._records.pop(key, None)
        return record


class RateLimiter:
    """At most `limit` events per key within a sliding `window` of seconds (`limit` ≤ 0: no
    limit). Used for registrations per client address."""

    def __init__(self, limit: int = 5, window: float = 600, max_keys: int = 10000):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def acquire(self, key: str) -> int:
        """0 → the event may happen (and is counted), else the seconds until one may."""
        if self.limit <= 0:
            return 0
        events = self._recent(key)
        if len(events) >= self.limit:
            return _seconds_until(events[-self.limit] + self.window)
        if key not in self._events:
            if len(self._events) >= self.max_keys:
                del self._events[next(iter(self._events))]  # the oldest entry
            self._events[key] = events
        events.append(time.monotonic())
        return 0

    def release(self, key: str) -> None:
        """The newest counted event did not happen after all (refused for another reason)."""
        events = self._events.get(key)
        if events:
            events.pop()
            if not events:
                del self._events[key]

    def count(self, key: str) -> int:
        return len(self._recent(key))

    def __len__(self) -> int:
        return len(self._events)

    def _recent(self, key: str) -> deque[float]:
        events = self._events.get(key, deque())
        horizon = time.monotonic() - self.window
        while events and events[0] < horizon:
            events.popleft()
        if not events:
            self._events.pop(key, None)
        return events


def _seconds_until(deadline: float) -> int:
    return max(0, math.ceil(deadline - time.monotonic()))
