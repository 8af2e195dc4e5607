"""`c.MLXManager.pool_url`: this server's `mlx/api` and `mlx/v1` routes served by a shared model
service (`jupyter mlx-manager serve`, typically a JupyterHub service), on behalf of the same user.

A request is first authenticated here, on the one auth path (Hub cookie with XSRF, Hub token,
or a JWT of ours: those are this server's and are never forwarded). It is then forwarded —
method, path under `mlx/`, query (less `token`), body — with a Hub credential of the same Hub
user: this server's own token (`$JUPYTERHUB_API_TOKEN`, which kernels have too) for its owner,
or the Hub token another Hub user presented here. Responses pass through as they arrive, chunk
by chunk (SSE, exports); a client that leaves closes the upstream request, which cancels its
generation there. An unreachable service is a 502 that says so.

Served here, not forwarded: registration, login, API tokens and tickets — credentials of this
server, which its clients present to it. The audit WebSocket is relayed message by message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, websocket_connect

from ..auth.hub import hub_model, hub_owner
from ..errors import Forbidden, MLXError, NotFound
from .base import MLXAPIHandler, MLXWebSocketHandler, authorized, web, ws_authenticated

__all__ = ["SharedService", "SharedServiceHandler", "SharedServiceWebSocket", "shared_service_routes"]

# Routes that stay on this server when pool_url is set: they mint or use this server's credentials.
LOCAL_ROUTES = ("mlx/api/auth/register", "mlx/api/auth/login", "mlx/api/auth/tokens", "mlx/api/auth/ticket")
REQUEST_HEADERS = ("Content-Type", "Accept", "Accept-Language", "Last-Event-ID", "Cache-Control")
RESPONSE_HEADERS = {
    "content-type", "cache-control", "retry-after", "content-disposition", "x-accel-buffering", "x-request-id",
    "location", "etag", "last-modified",
}  # fmt: skip
_HUB_TOKEN = re.compile(r"(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)
# Where the service's own handlers take a ticket in ?token= (SSE and exports, for browsers'
# EventSource and download links): here the ticket is one of this server's, checked here.
_TICKET_PATHS = re.compile(r"/mlx/api/(?:audit/export|downloads/\d+/progress)$")


class BadGateway(MLXError):
    status_code = 502
    reason = "pool_unreachable"


def shared_service_routes(routes: list[tuple]) -> list[tuple]:
    """The routes of a server with pool_url: its own auth routes, then forwarders for the rest."""
    local = [route for route in routes if route[0].startswith(LOCAL_ROUTES)]
    return [
        *local,
        (r"mlx/((?:api|v1)/.*/ws)", SharedServiceWebSocket),
        (r"mlx/((?:api|v1)(?:/.*)?)", SharedServiceHandler),
    ]


class SharedService:
    """The shared model service this server forwards to: its URL, a pooled HTTP client."""

    def __init__(self, url: str, log: Any):
        self.url = url  # ends with "/"
        self.log = log
        self._client: Any = None

    @property
    def client(self):
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=10.0, read=3600.0, write=60.0, pool=30.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
                follow_redirects=False,
                trust_env=False,  # the service is reached directly, never through an HTTP(S)_PROXY
            )
        return self._client

    def target(self, path: str, query: list[tuple[str, str]]) -> str:
        """The service's URL for `mlx/<path>`. The path arrives URL-decoded: a `..` segment (or an
        encoded `?`, `#`) would leave `mlx/` on the service's host while carrying this server's
        Hub token, so anything but plain segments is no endpoint at all."""
        segments = path.split("/")
        if any(part in ("", ".", "..") for part in segments) or any(c in path for c in "?#\\%"):
            raise NotFound(f"no such endpoint: mlx/{path}", reason="unknown_route")
        kept = [(k, v) for k, v in query if k != "token"]  # a ticket of ours stays here
        return self.url + "mlx/" + quote(path, safe="/") + ("?" + urlencode(kept) if kept else "")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _query(handler) -> list[tuple[str, str]]:
    return [(k, v.decode("utf-8", "replace")) for k, values in handler.request.query_arguments.items() for v in values]


def upstream_credential(handler) -> str:
    """A Hub token that makes the service see the same Hub user as this request: this server's
    own (its owner's) token, or the Hub token another Hub user presented here."""
    user = handler.mlx_user["username"]
    server_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if server_token and user == (hub_owner() or handler.services.owner_username):
        return server_token
    if not handler._jwt_authenticated and hub_model(handler.current_user) is not None:
        match = _HUB_TOKEN.match(handler.request.headers.get("Authorization", ""))
        if match and handler.token_authenticated:
            return match.group(1)
    if not server_token:
        raise BadGateway(
            "pool_url is set but this server has no Hub token ($JUPYTERHUB_API_TOKEN) to reach the shared "
            "model service with: run it under JupyterHub",
            reason="pool_credential_missing",
        )
    raise Forbidden(
        f"the shared model service serves {user!r} with their own Hub token: on this server use "
        "Authorization: token <your Hub API token>, or your own server",
        reason="pool_credential_required",
    )


class SharedServiceHandler(MLXAPIHandler):
    """Forwards one request to the shared model service and streams its answer back."""

    max_body_bytes = 64 * 1024 * 1024  # the service applies its own limits
    _upstream: asyncio.Task | None = None
    _client_gone = False

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._shutting_down = False

    @property
    def query_token_allowed(self) -> bool:  # type: ignore[override]
        return self.request.method == "GET" and _TICKET_PATHS.search(self.request.path) is not None

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._upstream is not None:
            self._upstream.cancel()  # closes the upstream connection: the service cancels too

    def end_for_shutdown(self) -> None:
        self._shutting_down = True
        if self._upstream is not None:
            self._upstream.cancel()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self.request.path.rstrip("/").split("/mlx/", 1)[-1].startswith("v1"):
            return super().write_error(status_code, **kwargs)
        from .openai import openai_error  # the OpenAI envelope, so the SDKs raise the right class

        exc = kwargs.get("exc_info", (None, None))[1]
        message, reason, param = self.error_details(exc)
        self.finish(json.dumps(openai_error(status_code, message, reason, param)))

    async def _forward(self, path: str) -> None:
        service: SharedService = self.services.shared_service
        headers = {name: self.request.headers[name] for name in REQUEST_HEADERS if name in self.request.headers}
        headers["Authorization"] = f"token {upstream_credential(self)}"
        headers["Accept-Encoding"] = "identity"  # bytes pass through as they are
        headers["X-Request-ID"] = self.request_id
        body = self.request.body if self.request.method not in ("GET", "HEAD", "DELETE") or self.request.body else None
        self.services.in_flight.track_request(self)
        try:
            self._upstream = asyncio.ensure_future(
                self._relay(service, self.request.method, service.target(path, _query(self)), headers, body)
            )
            if self._client_gone or self._shutting_down:
                self._upstream.cancel()
            try:
                await self._upstream
            except asyncio.CancelledError:
                if self._client_gone:
                    return
                if self._shutting_down and not self._headers_written:
                    from .openai import ServerShuttingDown

                    raise ServerShuttingDown("the server is shutting down; try again when it is back") from None
                if not self._finished:
                    self.finish()
        finally:
            self.services.in_flight.untrack_request(self)

    async def _relay(self, service: SharedService, method: str, url: str, headers: dict, body: bytes | None):
        import httpx

        try:
            request = service.client.build_request(method, url, headers=headers, content=body)
            response = await service.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            service.log.warning("shared model service %s unreachable: %s", service.url, type(exc).__name__)
            raise BadGateway(
                f"the shared model service at {service.url} is unreachable ({type(exc).__name__}): "
                "ask an administrator to start it (jupyter mlx-manager serve)"
            ) from None
        try:
            if response.status_code == 401:  # the request is authenticated here: the service refused our credential
                raise BadGateway(
                    f"the shared model service at {service.url} refused this server's Hub credential: the Hub must "
                    "grant access:services!service=<name> to the user (a role) and to servers' tokens "
                    "(c.Spawner.server_token_scopes)",
                    reason="pool_refused",
                )
            self.set_status(response.status_code, response.reason_phrase or None)
            content_type = "application/json"
            for name, value in response.headers.multi_items():
                if name.lower() == "content-type":
                    content_type = value
                elif name.lower() in RESPONSE_HEADERS:
                    self.set_header(name, value)
            self.set_header("Content-Type", content_type)
            if response.status_code in (204, 304):
                self.finish(set_content_type=content_type)
                return
            streamed = "content-length" not in response.headers
            try:
                async for chunk in response.aiter_raw():
                    self.write(chunk)
                    if streamed:
                        await self.flush()  # as it arrives: SSE events, export batches
            except httpx.HTTPError as exc:  # the service went away mid-answer
                service.log.warning("shared model service %s: answer cut (%s)", service.url, type(exc).__name__)
                if not self._headers_written:
                    self.clear()
                    raise BadGateway(f"the shared model service at {service.url} cut its answer short") from None
            self.finish(set_content_type=content_type)
        except StreamClosedError:
            pass  # the client left
        finally:
            # Shielded: the client's departure cancels this task, maybe while a write that found it
            # gone is closing the response; a close cut short leaves the upstream generation running.
            await asyncio.shield(response.aclose())

    @web.authenticated
    @authorized
    async def get(self, path: str):
        await self._forward(path)

    @web.authenticated
    @authorized
    async def post(self, path: str):
        await self._forward(path)

    @web.authenticated
    @authorized
    async def put(self, path: str):
        await self._forward(path)

    @web.authenticated
    @authorized
    async def patch(self, path: str):
        await self._forward(path)

    @web.authenticated
    @authorized
    async def delete(self, path: str):
        await self._forward(path)


class SharedServiceWebSocket(MLXWebSocketHandler):
    """Relays a WebSocket (the live audit feed) to the shared model service and back."""

    _upstream = None
    _closed = False

    @ws_authenticated
    async def get(self, path: str, *args, **kwargs):
        self._path = path
        return await super().get(path, *args, **kwargs)

    async def open(self, path: str, *args, **kwargs):
        if self.reject_if_refused():
            return
        service: SharedService = self.services.shared_service
        try:
            credential = upstream_credential(self)
        except MLXError as exc:
            self.close(1008, exc.message[:120])
            return
        try:
            url = service.target(path, _query(self))
        except MLXError as exc:
            self.close(1008, exc.message[:120])
            return
        url = "ws" + url[len("http") :]
        self.services.in_flight.track_socket(self)
        request = HTTPRequest(url, headers={"Authorization": f"token {credential}"}, connect_timeout=10)
        try:
            self._upstream = await websocket_connect(request, on_message_callback=self._from_upstream)
        except (HTTPClientError, OSError, StreamClosedError) as exc:
            service.log.warning("shared model service %s: WebSocket refused (%s)", service.url, exc)
            code = getattr(exc, "code", None)
            self.close(1008 if code in (401, 403) else 1011, "the shared model service refused or is unreachable")
            return
        if self._closed:
            self._upstream.close()

    def _from_upstream(self, message) -> None:
        if message is None:  # the service closed it: pass its code and reason on
            upstream = self._upstream
            code = upstream.close_code if upstream is not None and upstream.close_code else 1011
            if not self._closed:
                self.close(code, (upstream.close_reason if upstream is not None else None) or "")
            return
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(message, binary=isinstance(message, bytes))

    def on_message(self, message) -> None:
        if self._upstream is not None:
            with contextlib.suppress(WebSocketClosedError):
                self._upstream.write_message(message, binary=isinstance(message, bytes))

    async def still_allowed(self) -> bool:
        try:
            self.services.users.require_active(await self.services.users.get(self.mlx_user["id"]))
        except web.HTTPError as exc:
            self.close(1008, (getattr(exc, "message", None) or "forbidden")[:120])
            return False
        return True

    def on_close(self) -> None:
        self._closed = True
        self.services.in_flight.untrack_socket(self)
        if self._upstream is not None:
            self._upstream.close()
