"""Failing fast when the Hub cannot be reached.

huggingface_hub retries network errors with back-off (`http_backoff`: five retries, about
20 s), including errors that are already a final answer: a host name that does not resolve
(no network, DNS failure) or a connection refused. `fail_fast()` makes those two, and a
network that is unreachable, raise `HubUnreachable` at once — an error huggingface_hub does
not retry — with a message that says what happened. Timeouts, dropped connections and 5xx
answers are still retried as before.

It replaces huggingface_hub's HTTP client factory for the whole process, so it is called in
the processes that talk to the Hub only for us: the server (Hub search) and the download
worker.
"""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit

import httpx2

# errno values of a connect() the network answered: nothing listens, no route, no network.
_REFUSED = {errno.ECONNREFUSED}
_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL}


class HubUnreachable(ConnectionError):
    """The Hub's host name does not resolve, or its host refuses or cannot be routed to."""


def unreachable_reason(exc: BaseException) -> str | None:
    """Why a connection failed, if the failure is a final answer (else None: worth a retry)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "its host name could not be resolved (no network, or a DNS failure)"
        if isinstance(cause, OSError) and cause.errno in _REFUSED:
            return "the connection was refused"
        if isinstance(cause, OSError) and cause.errno in _NO_ROUTE:
            return "there is no route to it (no network)"
        cause = cause.__cause__ or cause.__context__
    return None


def describe_unreachable(endpoint: str, reason: str) -> str:
    host = urlsplit(endpoint).netloc or endpoint
    return f"the Hub at {host} cannot be reached: {reason}"


class _FailFastTransport(httpx2.BaseTransport):
    """An httpx2 transport that turns a connect error the network answered into `HubUnreachable`."""

    def __init__(self, inner: httpx2.BaseTransport):
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return self._inner.handle_request(request)
        except httpx2.ConnectError as exc:
            reason = unreachable_reason(exc)
            if reason is None:
                raise
            raise HubUnreachable(describe_unreachable(str(request.url), reason)) from exc

    def close(self) -> None:
        self._inner.close()


def fail_fast() -> None:
    """Install huggingface_hub's HTTP client with the fail-fast transport (its own settings
    otherwise: its request hook — offline mode, request ids — and redirects)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import hf_request_event_hook

    def client() -> httpx2.Client:
        transport = _FailFastTransport(httpx2.HTTPTransport())
        return httpx2.Client(
            event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=None, transport=transport
        )

    set_client_factory(client)
