"""The tests' one way to wait for something: poll until it holds, or fail saying what was awaited and
what was last seen, so a failure on a slow CI machine can be read without rerunning it.

A module of its own rather than conftest.py: tests/ui has its own conftest.py, which shadows the
`conftest` module there.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

SHOWN = 2000  # characters of the last value in a failure (a record can be megabytes)


def _timed_out(message: str, timeout: float, value: Any) -> AssertionError:
    shown = repr(value)
    if len(shown) > SHOWN:
        shown = shown[:SHOWN] + "…"
    return AssertionError(f"waited {timeout} s for {message}; last seen: {shown}")


def _settled(value: Any, done: Callable[[Any], Any], deadline: float, message: str, timeout: float) -> bool:
    """Whether `value` is what is awaited; an AssertionError saying so once the time is up."""
    if done(value):
        return True
    if time.monotonic() > deadline:
        raise _timed_out(message, timeout, value)
    return False


def wait_until(
    poll: Callable[[], Any],
    message: str,
    timeout: float = 30,
    interval: float = 0.1,
    done: Callable[[Any], Any] = bool,
) -> Any:
    """Call `poll` until `done(value)` holds (by default: the value is truthy) and return that value."""
    deadline = time.monotonic() + timeout
    while not _settled(value := poll(), done, deadline, message, timeout):
        time.sleep(interval)
    return value


async def wait_until_async(
    poll: Callable[[], Any],
    message: str,
    timeout: float = 30,
    interval: float = 0.1,
    done: Callable[[Any], Any] = bool,
) -> Any:
    """`wait_until` inside the test's event loop: `poll` may return an awaitable (`lambda: api(...)`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if inspect.isawaitable(value):
            value = await value
        if _settled(value, done, deadline, message, timeout):
            return value
        await asyncio.sleep(interval)
