"""Failed-login throttling per (username, client address), kept in memory."""

from __future__ import annotations

import time
from collections import deque


class LoginThrottle:
    """After `free_attempts` failures within `window` seconds, further attempts wait.

    The wait doubles with each further failure (from `base_delay`, capped at `max_delay`),
    and a successful login clears the record.
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
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, username: str, client: str) -> int:
        """Seconds to wait before another attempt is allowed (0: go ahead)."""
        failures = self._recent((username.lower(), client))
        extra = len(failures) - self.free_attempts
        if extra < 0:
            return 0
        delay = min(self.base_delay * 2**extra, self.max_delay)
        return max(0, int(failures[-1] + delay - time.monotonic() + 0.999))

    def failed(self, username: str, client: str) -> None:
        key = (username.lower(), client)
        failures = self._recent(key)
        if key not in self._failures and len(self._failures) >= self.max_keys:
            del self._failures[next(iter(self._failures))]  # the oldest entry
        self._failures[key] = failures
        failures.append(time.monotonic())

    def succeeded(self, username: str, client: str) -> None:
        self._failures.pop((username.lower(), client), None)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        """Failures inside the window; forgets keys with none so memory stays bounded."""
        failures = self._failures.get(key, deque())
        horizon = time.monotonic() - self.window
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(key, None)
        return failures
