"""One authentication path for every handler: REST, SSE and WebSocket.

A request is authenticated either by Jupyter (cookie with XSRF, or the Jupyter token; under
JupyterHub, the Hub cookie or a Hub token) or by a JWT of ours: `Authorization: Bearer <jwt>`
or `x-api-key: <jwt>` (the anthropic SDK's header) anywhere, a ticket in `?token=<jwt>` only
where `query_token_allowed` (SSE, WebSocket and export, whose browser APIs cannot send
headers). A valid JWT pre-authenticates the request *before* Jupyter's own `prepare`, which
then accepts it as the current user (under JupyterHub, as `_jupyterhub_user`, so the Hub's
identity provider never sees, let alone forwards, our token); XSRF is skipped only for such
requests. Either way the user's status is re-read from the database on every request.

The same handlers run without Jupyter in `jupyter mlx-manager serve` (serve/): there "Jupyter"
is that host's identity provider, chosen at start-up — none but our JWTs (standalone), or
JupyterHub's own provider as a Hub service (Hub OAuth cookie, Hub tokens) — below this one path.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from jupyter_server.auth import IdentityProvider, PasswordIdentityProvider, User
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.log import _scrub_uri  # the scrubbing Jupyter's access log uses
from tornado import web
from tornado.httputil import HTTPInputError, parse_body_arguments
from tornado.websocket import WebSocketHandler

from ..auth import Actor, InvalidToken, looks_like_jwt
from ..auth.hub import TokenHubUser, account_for_hub_user, hub_auth_of, hub_model
from ..errors import BadRequest, Forbidden, MLXError, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from ..inference.images import ImageBytesHeld, ImagesInFlight

if TYPE_CHECKING:
    from ..services import Services

__all__ = ["MLXAPIHandler", "MLXWebSocketHandler", "allow_unauthenticated", "authorized", "web", "ws_authenticated"]

# Jupyter's stock identity providers invent a new "Anonymous …" name per token request,
# so requests they authenticate act as the owner account instead.
_NAMELESS_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)
# The most of a body read before a credential is known (login, register), and how deeply a JSON
# body may nest.
UNAUTHENTICATED_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64
INLINE_JSON_BYTES = 64 * 1024  # bodies up to this parse on the event loop (well under a millisecond)


class MLXAuthMixin(ExtensionHandlerMixin):
    """Resolves `self.mlx_user` (an approved user of ours) and `self.actor` for every request."""

    auth_resource = "mlx"
    query_token_allowed = False
    mlx_user: dict[str, Any] | None = None
    actor: Actor | None = None
    _jwt_authenticated = False
    _xsrf_refusal: web.HTTPError | None = None  # set when the XSRF check refused this request
    credential = None  # (token, claims) when a JWT of ours authenticated the request

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A client error is in the access log already (one line per request): its message goes to
        the debug log, not a second warning. Server errors are logged as Tornado does."""
        if isinstance(value, web.HTTPError) and value.status_code < 500:
            self.log.debug("%d %s: %s", value.status_code, self._request_summary(), value.log_message or value)
            return
        super().log_exception(typ, value, tb)

    def initialize(self, name: str, services: Services, *args: Any, **kwargs: Any) -> None:
        """Every route is handed the services it may use (services.py), with the extension's name."""
        self.services = services
        super().initialize(name, *args, **kwargs)

    def _presented_jwt(self) -> tuple[str, bool] | None:
        """(token, came in the URL) for a JWT of ours, or None (then Jupyter authenticates)."""
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and looks_like_jwt(value.strip()):
            return value.strip(), False
        api_key = self.request.headers.get("x-api-key", "").strip()  # the anthropic SDK's header
        if looks_like_jwt(api_key):
            return api_key, False
        if self.query_token_allowed:
            value = self.get_query_argument("token", "")
            if looks_like_jwt(value):
                return value, True
        return None

    def _request_summary(self) -> str:
        """Tornado's error log lines quote the URI: without tokens in its query string."""
        return f"{self.request.method} {_scrub_uri(self.request.uri or '')} ({self.request.remote_ip})"

    async def _authenticate(self) -> None:
        """Run before Jupyter's prepare: a JWT of ours becomes the Jupyter current user."""
        # Until Jupyter's prepare runs, nobody is signed in (so an early error reply does not
        # fall back to tornado's deprecated get_current_user()).
        self.current_user = self._jupyter_current_user = None
        presented = self._presented_jwt()
        if presented is None:
            return
        token, in_url = presented
        try:
            user, claims = await self.services.users.user_for_token(token)
        except InvalidToken:
            raise Unauthorized("invalid or expired token", reason="invalid_token") from None
        if in_url and claims.kind != "ticket":
            # URLs end up in logs and histories: only short-lived tickets may travel there.
            raise Unauthorized("use a ticket (POST mlx/api/auth/ticket) in ?token=", reason="ticket_required")
        if not in_url and claims.kind == "ticket":
            # A leaked ticket can neither mint API tokens nor renew itself.
            raise Unauthorized(
                "a ticket is accepted only in ?token= on stream and WebSocket URLs", reason="ticket_not_bearer"
            )
        if user is None:
            raise Unauthorized("the account behind this token no longer exists", reason="unknown_user")
        self.credential = (token, claims)
        self._jwt_authenticated = True
        hub_auth = hub_auth_of(self.identity_provider)
        if hub_auth is not None:
            # JupyterHub's identity provider short-cuts on this (and otherwise sends the token to
            # the Hub's API); its authorizer checks these scopes.
            self._jupyterhub_user = TokenHubUser(user["username"], hub_auth.access_scopes)
            self._jupyter_current_user = self._jupyterhub_user
        else:
            self._jupyter_current_user = User(username=user["username"], name=user["username"])
        self._resolve_actor(user, "api_token" if claims.kind == "api" else "session")

    async def _map_jupyter_user(self) -> None:
        """After Jupyter's prepare: find our account for a Jupyter-authenticated request."""
        if self._jwt_authenticated or self.current_user is None:
            return
        # Jupyter and the Hub try a token before the cookie, and JupyterLab may send the Jupyter
        # token too: a browser is a request with the login cookie this server signed, whatever
        # else it sends (headers such as X-XSRFToken are the caller's choice).
        client = "browser" if not self.token_authenticated or self._presents_login_cookie() else "kernel"
        hub_user = hub_model(self.current_user)
        if hub_user is not None and hub_user.get("kind", "user") != "user":
            # A Hub service is not a person: its name may equal a user's, so it gets no account.
            raise Forbidden("Hub services have no account here; use a user's token", reason="hub_service")
        if hub_user is not None:  # JupyterHub: the Hub's roles carry over
            user = await account_for_hub_user(
                self.services.users, self.current_user.username, bool(hub_user.get("admin"))
            )
        elif type(self.identity_provider) in _NAMELESS_PROVIDERS:
            owner = self.services.owner_username
            if not owner:
                raise Unauthorized(
                    "this server has no owner account: sign in with mlx/api/auth/login", reason="login_required"
                )
            user = await self.services.users.get_by_name(owner)
        else:
            user = await self.services.users.user_for_jupyter_name(self.current_user.username)
        # The Hub's groups, for group budgets (no groups where there is no Hub).
        groups = tuple(g for g in (hub_user or {}).get("groups") or () if isinstance(g, str))
        self._resolve_actor(user, client, groups)

    def _presents_login_cookie(self) -> bool:
        """Whether the request carries the host's login cookie (Jupyter's, or the Hub's OAuth
        cookie), signed with this server's secret."""
        hub_auth = hub_auth_of(self.identity_provider)
        if hub_auth is not None:
            return self.get_secure_cookie(hub_auth.cookie_name) is not None
        cookie_name = getattr(self.identity_provider, "get_cookie_name", None)
        if cookie_name is None:
            return False
        kwargs = getattr(self.identity_provider, "get_secure_cookie_kwargs", None) or {}
        return self.get_secure_cookie(cookie_name(self), **kwargs) is not None

    def _resolve_actor(self, user: dict[str, Any] | None, client: str, groups: tuple[str, ...] | None = None) -> None:
        self.mlx_user = self.services.users.require_active(user)
        self.actor = Actor(user=self.mlx_user, client=client, groups=groups)

    def _is_public(self) -> bool:
        method = getattr(self, (self.request.method or "").lower(), None)
        return bool(getattr(method, "__allow_unauthenticated", False))

    def check_xsrf_cookie(self) -> None:
        # A bearer JWT is never attached by a browser on its own, so it cannot be forged
        # cross-site. Login and register take only application/json, which another site can
        # send only after a CORS preflight that Jupyter refuses: no cookie, no XSRF risk.
        if self._jwt_authenticated or (self._is_public() and self._content_type() == "application/json"):
            return None
        try:
            return super().check_xsrf_cookie()
        except web.HTTPError as exc:
            # Remembered: JupyterHub drops a cookie that fails this check silently, which
            # would otherwise look like "not signed in" (401) rather than the 403 it is.
            # Without any cookie there was no session to protect: that is a missing credential (401).
            if exc.status_code == 403 and self.request.cookies:
                self._xsrf_refusal = exc
            raise

    def _xsrf_error(self) -> Forbidden:
        detail = self._xsrf_refusal.log_message if self._xsrf_refusal is not None else "XSRF check failed"
        return Forbidden(
            f"{detail}: a cookie-authenticated request must send the X-XSRFToken header (the _xsrf cookie)",
            reason="xsrf",
        )

    def _content_type(self) -> str:
        return self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def form_upload(self, expected: str) -> tuple[dict[str, str], dict[str, Any] | None]:
        """A multipart form's text fields and its `file` (Tornado's `{filename, body, …}`, or None);
        a 400 on `file` naming what was `expected` when the body is not such a form."""
        if self._content_type() != "multipart/form-data":
            from ..inference.request import InvalidParam

            raise InvalidParam(f"send {expected} as multipart/form-data", "file", "invalid_body")
        fields = {k: v[0].decode("utf-8", "replace") for k, v in self.request.body_arguments.items() if v}
        files = self.request.files.get("file") or []
        return fields, files[0] if files else None

    def require_admin(self) -> Actor:
        if not self.mlx_user or not self.mlx_user["is_admin"]:
            raise web.HTTPError(403, "administrators only", reason="admin_required")
        return self.actor

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors are JSON `{"message", "reason"}`, whatever raised them, and `param` where the
        error names the field at fault."""
        message, reason, param = self.error_details(kwargs.get("exc_info", (None, None))[1])
        self.finish(json.dumps({"message": message, "reason": reason, **({"param": param} if param else {})}))

    def error_details(self, exc: BaseException | None) -> tuple[str, str | None, str | None]:
        """(message, reason, param) of an error reply; sets its headers. Internal errors
        are not described to the client (they are logged by tornado)."""
        message, reason, param = self._reason or "error", None, None
        if isinstance(exc, MLXError):
            message, reason, param = exc.message, exc.reason, getattr(exc, "param", None)
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, web.HTTPError):
            message, reason = exc.log_message or message, exc.reason
        elif exc is not None:
            message, reason = "internal server error", "internal_error"
        self.set_header("Content-Type", "application/json")
        if getattr(self, "request_id", None):
            self.set_header("X-Request-ID", self.request_id)
        return message, reason, param


@web.stream_request_body
class MLXAPIHandler(MLXAuthMixin, APIHandler):
    """JSON management API handler.

    Every route streams its body (`stream_request_body`) so that its fate is decided on the
    headers, before any of it is read: a `Content-Length` beyond the route's limit is 413, a
    request without a credential is 401 (public routes read at most 64 KiB), and the bytes of a
    route that may carry images count against the user's image bytes in flight (429). Only
    then is the body read, into `self.request.body` (and, for forms, its arguments and files)
    as Tornado would have done, so the handlers read it as usual."""

    # The route's body limit in bytes; None: the server's JSON limit (`c.MLXManager.max_body_mb`).
    max_body_bytes: int | None = 64 * 1024
    # Whether the body may carry images: its length counts against `max_image_mb_in_flight`.
    counts_image_bytes = False
    _body_chunks: list[bytes] | None = None
    _body_received = 0
    _body_limit = 0
    _image_bytes: ImageBytesHeld | None = None
    _refused_unread = False
    _json_body: dict[str, Any] | None = None

    @property
    def max_json_body_bytes(self) -> int:
        """`c.MLXManager.max_body_mb`: the most a JSON body of text may weigh."""
        return int(self.services.max_body_mb * 1024 * 1024)

    def body_limit(self) -> int:
        """The most this request's body may weigh: the route's limit, and no more than
        `UNAUTHENTICATED_BODY_BYTES` on the routes that need no credential."""
        limit = self.max_json_body_bytes if self.max_body_bytes is None else self.max_body_bytes
        return min(limit, UNAUTHENTICATED_BODY_BYTES) if self._is_public() else limit

    async def prepare(self) -> None:
        self.current_user = self._jupyter_current_user = None
        self.request_id = uuid.uuid4().hex
        self.set_header("X-Request-ID", self.request_id)
        limit = self.body_limit()
        length = _declared_length(self.request)
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        if self._is_public():
            await super().prepare()
            self._receive_body(limit)
            return
        try:
            await self._admit(limit, length)
        except web.HTTPError:
            self._refused_unread = True
            raise

    def set_default_headers(self) -> None:
        """A request refused before its body is read: Tornado closes its connection after the
        answer, so the answer says so (a proxy that kept the connection alive, like the Hub's,
        would answer the next request on it with a 503). Set here, as the error page clears headers."""
        super().set_default_headers()
        if self._refused_unread:
            self.set_header("Connection", "close")

    async def _admit(self, limit: int, length: int | None) -> None:
        """The credential, the host's checks (XSRF), the account, the image bytes: then the body."""
        await self._authenticate()
        try:
            await super().prepare()
        except web.HTTPError as exc:
            if exc.status_code == 403 and self._xsrf_refusal is not None:
                raise self._xsrf_error() from None
            if exc.status_code == 403 and self.current_user is None:
                raise _missing_credential(self.identity_provider) from None
            raise
        if self.current_user is None:  # servers that allow unauthenticated access by default
            if self._xsrf_refusal is not None:
                raise self._xsrf_error()
            raise _missing_credential(self.identity_provider)
        await self._map_jupyter_user()
        from ..audit.attribution import attribute  # the kernel's notebook and cell, for the audit

        await attribute(self)
        if self.counts_image_bytes:  # a chunked body (no Content-Length) is counted as it arrives
            self._image_bytes = self.mlx_images_in_flight.hold(self.mlx_user["id"], length or 0)
        self._receive_body(limit)

    @property
    def mlx_images_in_flight(self) -> ImagesInFlight:
        """The server's one account of image bytes in flight per user (`max_image_mb_in_flight`)."""
        return self.settings.setdefault(
            "mlx_images_in_flight", ImagesInFlight(int(self.services.max_image_mb_in_flight * 1024 * 1024))
        )

    def _receive_body(self, limit: int) -> None:
        """From here on the body is read (up to `limit`); it lands in `self.request.body`."""
        self._body_chunks, self._body_limit = [], limit
        # Tornado's own bound (a chunked body's declared sizes), a little above ours so that ours answers.
        self.request.connection.set_max_body_size(limit + 64 * 1024)
        self.request._body_future.add_done_callback(self._body_complete)  # before the method awaits it
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            # Tornado tells `on_connection_close` of a client gone mid-body, which subclasses
            # override: the stream itself tells us, so the request ends and its bytes are released.
            stream.set_close_callback(self._closed_during_body)

    def data_received(self, chunk: bytes) -> None:
        if self._body_chunks is None:
            return
        self._body_received += len(chunk)
        try:
            if self._body_received > self._body_limit:  # a chunked body that outgrew the limit
                raise PayloadTooLarge(f"request body larger than {self._body_limit} bytes")
            if self._image_bytes is not None and self._body_received > self._image_bytes.size:
                self._image_bytes.grow(self._body_received - self._image_bytes.size)
        except MLXError as exc:
            self._body_chunks = None
            self.send_error(exc.status_code, exc_info=(type(exc), exc, None))
            web.RequestHandler.on_connection_close(self)  # the method never runs
            return
        self._body_chunks.append(chunk)

    def _body_complete(self, future) -> None:
        if future.cancelled() or future.exception() is not None or self._body_chunks is None:
            return
        self.request.body, self._body_chunks = b"".join(self._body_chunks), None
        if self._content_type() in ("application/x-www-form-urlencoded", "multipart/form-data"):
            try:
                parse_body_arguments(
                    self.request.headers.get("Content-Type", ""),
                    self.request.body,
                    self.request.body_arguments,
                    self.request.files,
                    self.request.headers,
                )
            except HTTPInputError:
                return  # a malformed form has no fields: the handler answers 400 for the one it misses
            for name, values in self.request.body_arguments.items():
                self.request.arguments.setdefault(name, []).extend(values)

    def _closed_during_body(self) -> None:
        self._body_chunks = None
        web.RequestHandler.on_connection_close(self)
        self._release_image_bytes()

    def on_finish(self) -> None:
        self._release_image_bytes()
        super().on_finish()

    def _release_image_bytes(self) -> None:
        held, self._image_bytes = self._image_bytes, None
        if held is not None:
            held.release()

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object; never logs it (it may hold a password). Parsed once: the
        raw bytes are let go then (a body with images weighs hundreds of MB, for as long as the
        request lasts)."""
        if self._json_body is None:
            if self._content_type() != "application/json":
                raise UnsupportedMediaType("send the body as application/json")
            self._json_body = parse_json_object(self.request.body or b"{}")
            self.request.body = b""
        return self._json_body

    async def json_body_off_loop(self) -> dict[str, Any]:
        """`json_body()`, parsed in the executor: a large body (16 MB of JSON is ~0.1 s of CPU)
        never holds up the event loop, and so never other users' requests."""
        if self._json_body is None:
            if self._content_type() != "application/json":
                raise UnsupportedMediaType("send the body as application/json")
            body, self.request.body = self.request.body or b"{}", b""
            if len(body) <= INLINE_JSON_BYTES:  # cheaper than a hop to the executor and back
                self._json_body = parse_json_object(body)
            else:
                # json.loads holds the GIL for the whole parse (~12 ms per MB): one big parse at a
                # time, so the event loop gets its turn between them whatever a flood sends.
                parsing = self.settings.setdefault("mlx_big_json_parse", asyncio.Semaphore(1))
                async with parsing:
                    self._json_body = await asyncio.get_running_loop().run_in_executor(None, parse_json_object, body)
        return self._json_body

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))


def _declared_length(request) -> int | None:
    """The request's Content-Length, None without one; 400 when it is not a number."""
    value = request.headers.get("Content-Length")
    if value is None:
        return None
    digits = re.fullmatch(r"\s*([0-9]+)\s*", value)
    if digits is None:
        raise BadRequest("Content-Length is not a number", reason="invalid_content_length")
    return int(digits.group(1)) if len(digits.group(1)) <= 18 else 10**18


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object, or 400 `invalid_json`: not JSON, NaN or Infinity, or nested deeper than
    `MAX_JSON_DEPTH` (which would otherwise exhaust the parser's or a later walker's recursion)."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON", reason="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object", reason="invalid_json")
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body is nested deeper than {MAX_JSON_DEPTH} levels", reason="invalid_json")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _missing_credential(identity_provider: Any = None) -> Unauthorized:
    """No credential at all is a 401 (so OpenAI SDKs raise AuthenticationError), not a 403."""
    accepted = getattr(identity_provider, "mlx_credentials", None) or (
        "a Jupyter token or cookie, or Authorization: Bearer <token>"
    )
    return Unauthorized(f"authentication required: {accepted}", reason="unauthorized")


def ws_authenticated(method):
    """Like Jupyter's `@ws_authenticated`, but a refused client is accepted only to be closed
    with code 1008 (policy violation) before anything else is sent to it."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if self._rejection is None and self.current_user is None:
            self._rejection = Unauthorized("authentication required", reason="unauthorized")
        if self._rejection is None:
            try:
                self.authorizer_check()
            except web.HTTPError as exc:
                self._rejection = exc
        if self._rejection is not None:
            return await WebSocketHandler.get(self, *args, **kwargs)
        return await method(self, *args, **kwargs)

    wrapper.__allow_unauthenticated = False  # type: ignore[attr-defined]  # same marker as Jupyter's
    return wrapper


class MLXWebSocketHandler(MLXAuthMixin, WebSocketMixin, WebSocketHandler, JupyterHandler):
    query_token_allowed = True
    _rejection: Exception | None = None

    async def prepare(self) -> None:
        try:
            await self._authenticate()
            await super().prepare()
            await self._map_jupyter_user()
        except web.HTTPError as exc:
            self._rejection = exc

    def authorizer_check(self) -> None:
        if not self.authorizer.is_authorized(self, self.current_user, "read", self.auth_resource):
            raise web.HTTPError(403, "not authorized", reason="forbidden")

    def reject_if_refused(self) -> bool:
        """Call first in `open()`: closes a refused connection with 1008; True if it did."""
        if self._rejection is None:
            return False
        message = (
            getattr(self._rejection, "message", None) or getattr(self._rejection, "log_message", None) or "forbidden"
        )
        self.close(1008, message[:120])
        return True
