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

import functools
import json
import uuid
from typing import Any

from jupyter_server.auth import IdentityProvider, PasswordIdentityProvider, User
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.log import _scrub_uri  # the scrubbing Jupyter's access log uses
from tornado import web
from tornado.websocket import WebSocketHandler

from ..auth import Actor, InvalidToken, looks_like_jwt
from ..auth.hub import TokenHubUser, account_for_hub_user, hub_auth_of, hub_model
from ..errors import BadRequest, Forbidden, MLXError, PayloadTooLarge, Unauthorized, UnsupportedMediaType

__all__ = ["MLXAPIHandler", "MLXWebSocketHandler", "allow_unauthenticated", "authorized", "web", "ws_authenticated"]

# Jupyter's stock identity providers invent a new "Anonymous …" name per token request,
# so requests they authenticate act as the owner account instead.
_NAMELESS_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)


class MLXAuthMixin(ExtensionHandlerMixin):
    """Resolves `self.mlx_user` (an approved user of ours) and `self.actor` for every request."""

    auth_resource = "mlx"
    query_token_allowed = False
    mlx_user: dict[str, Any] | None = None
    actor: Actor | None = None
    _jwt_authenticated = False
    _xsrf_refusal: web.HTTPError | None = None  # set when the XSRF check refused this request
    credential = None  # (token, claims) when a JWT of ours authenticated the request

    @property
    def mlx(self):
        """The running `MLXManager` extension app: the services live there."""
        return self.extensionapp

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
            user, claims = await self.mlx.users.user_for_token(token)
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
        # JupyterLab sends the Jupyter token too, but only a browser page sends the XSRF header.
        browser = not self.token_authenticated or "X-XSRFToken" in self.request.headers
        client = "browser" if browser else "kernel"
        hub_user = hub_model(self.current_user)
        if hub_user is not None and hub_user.get("kind", "user") != "user":
            # A Hub service is not a person: its name may equal a user's, so it gets no account.
            raise Forbidden("Hub services have no account here; use a user's token", reason="hub_service")
        if hub_user is not None:  # JupyterHub: the Hub's roles carry over
            user = await account_for_hub_user(self.mlx.users, self.current_user.username, bool(hub_user.get("admin")))
        elif type(self.identity_provider) in _NAMELESS_PROVIDERS:
            owner = self.mlx.owner_username
            if not owner:
                raise Unauthorized(
                    "this server has no owner account: sign in with mlx/api/auth/login", reason="login_required"
                )
            user = await self.mlx.users.get_by_name(owner)
        else:
            user = await self.mlx.users.user_for_jupyter_name(self.current_user.username)
        self._resolve_actor(user, client)

    def _resolve_actor(self, user: dict[str, Any] | None, client: str) -> None:
        self.mlx_user = self.mlx.users.require_active(user)
        self.actor = Actor(user=self.mlx_user, client=client)

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

    def require_admin(self) -> Actor:
        if not self.mlx_user or not self.mlx_user["is_admin"]:
            raise web.HTTPError(403, "administrators only", reason="admin_required")
        return self.actor

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors are JSON `{"message", "reason"}`, whatever raised them."""
        message, reason, _ = self.error_details(kwargs.get("exc_info", (None, None))[1])
        self.finish(json.dumps({"message": message, "reason": reason}))

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


class MLXAPIHandler(MLXAuthMixin, APIHandler):
    """JSON management API handler."""

    max_body_bytes = 64 * 1024

    async def prepare(self) -> None:
        self.current_user = self._jupyter_current_user = None
        self.request_id = uuid.uuid4().hex
        self.set_header("X-Request-ID", self.request_id)
        length = max(len(self.request.body or b""), int(self.request.headers.get("Content-Length", 0) or 0))
        if length > self.max_body_bytes:
            raise PayloadTooLarge(f"request body larger than {self.max_body_bytes} bytes")
        if self._is_public():
            await super().prepare()
            return
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

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object; never logs it (it may hold a password)."""
        if self._content_type() != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON", reason="invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object", reason="invalid_json")
        return body

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))


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
