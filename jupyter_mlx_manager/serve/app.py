"""`jupyter mlx-manager serve`: the whole backend as a standalone Tornado server, no Jupyter.

Not a second application (DESIGN "Same handlers, two hosts"): the `MLXManager` extension app
builds its services exactly as in a Jupyter server (`initialize_settings`) and stops them the
same way (`stop_extension`); its handler classes (`handlers.ROUTES`) are mounted in a plain
`tornado.web.Application` whose settings give them what a Jupyter server would: the extension
app under its name, an identity provider and an authorizer (chosen at start-up, see
`identity.py`), `base_url`, XSRF cookies under it, a cookie secret and the request log.

Configuration is the usual one: `c.MLXManager.*` from the Jupyter config files and from the
command line (`--MLXManager.model_dirs=/path`); `--ip`/`--port` (`c.MLXServe.ip`/`port`).
SIGTERM or SIGINT stops it gracefully: no new connections, streams end with a final event,
runners stop, WebSockets close with 1001, the database is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections import Counter
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.log import _scrub_uri
from jupyter_server.log import log_request as jupyter_log_request
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.log import LogFormatter
from traitlets import Enum, Int, Unicode, default
from traitlets.config import Application

from .._version import __version__
from ..auth.hub import hub_auth_of
from ..handlers.base import UNAUTHENTICATED_BODY_BYTES, MLXAuthMixin, allow_unauthenticated
from .identity import Identity, hub_service_identity, in_hub_service, standalone_identity

__all__ = ["MLXServe", "main", "make_web_app"]

log = logging.getLogger("jupyter_mlx_manager.serve")


class ServiceHomeHandler(MLXAuthMixin, JupyterHandler):
    """`<base_url>`: where the service is and who you are. As a Hub service, a browser that is
    not signed in is sent through the Hub's OAuth login and comes back here signed in (with the
    `_xsrf` cookie its POSTs then echo in `X-XSRFToken`)."""

    async def prepare(self) -> None:
        self.current_user = self._jupyter_current_user = None
        await JupyterHandler.prepare(self, _redirect_to_login=False)

    @allow_unauthenticated
    async def get(self):
        base = self.base_url
        info: dict[str, Any] = {
            "service": "jupyter-mlx-manager",
            "version": __version__,
            "identity": self.settings["mlx_identity"],
            "api": base + "mlx/api/",
            "openai": base + "mlx/v1/",
        }
        if self.current_user is None:
            if hub_auth_of(self.identity_provider) is not None:
                self.redirect(self.get_login_url())  # Hub OAuth, back here afterwards
                return
            info["sign_in"] = base + "mlx/api/auth/login"
        else:
            await self._map_jupyter_user()
            info["user"] = {k: self.mlx_user[k] for k in ("username", "status", "is_admin")}
            self.xsrf_token  # noqa: B018 - sets the _xsrf cookie for this browser's POSTs
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(info))


def _log_request(handler: web.RequestHandler) -> None:
    """Jupyter's request log for our handlers; a plain line for the others (the OAuth
    callback), whose `current_user` would ask the Hub again."""
    if isinstance(handler, JupyterHandler):
        jupyter_log_request(handler, record_prometheus_metrics=False)
        return
    status = handler.get_status()
    method = log.warning if status >= 400 else log.debug
    method("%d %s %s %.2fms", status, handler.request.method, _scrub_uri(handler.request.uri or ""),
           1000.0 * handler.request.request_time())  # fmt: skip


def make_web_app(manager: Any, identity: Identity, cookie_secret: bytes | None = None) -> web.Application:
    """The extension's routes under `identity.base_url` in a plain tornado application."""
    base_url = identity.base_url
    prefix = re.escape(base_url.rstrip("/")) + "/"
    handler_kwargs = {"name": manager.name}
    routes: list[Any] = [(prefix + "?", ServiceHomeHandler, {**handler_kwargs, "services": manager.services})]
    for path, handler_class, kwargs in identity.routes:
        routes.append((prefix + path, handler_class, kwargs))
    for route in manager.handlers:
        pattern, handler_class, *rest = route
        routes.append((prefix + pattern.lstrip("/"), handler_class, {**handler_kwargs, **(rest[0] if rest else {})}))
    settings = {
        "base_url": base_url,
        manager.name: manager,  # ExtensionHandlerMixin's extensionapp (our handlers use their services)
        f"{manager.name}_config": manager.config,
        "config": manager.config,
        "serverapp": manager.serverapp,
        "identity_provider": identity.identity_provider,
        "authorizer": identity.authorizer,
        "mlx_identity": identity.kind,
        "allow_unauthenticated_access": False,
        "allow_remote_access": True,  # every route needs a credential of ours or of the Hub
        # Checked in JupyterHandler.prepare, once the credential is known. JupyterHub's check (patched in by
        # its identity provider) cannot run before that, so like its single-user servers: not in tornado's _execute.
        "xsrf_cookies": identity.kind != "jupyterhub",
        "xsrf_cookie_kwargs": {"path": base_url},
        "cookie_secret": cookie_secret or secrets.token_bytes(32),
        "log_function": _log_request,
        "headers": {},
        "websocket_max_message_size": 10 * 1024 * 1024,
    }
    return web.Application(routes, **settings)


# Server-wide bounds on every connection. Each route streams its body and sets its own limit
# before reading it (handlers/base.py); this bound is for the rest (the home page, the Hub's
# OAuth callback), which take no body.
CONNECTION_LIMITS = {
    "max_body_size": UNAUTHENTICATED_BODY_BYTES,
    "max_buffer_size": 16 * 1024 * 1024,  # what one read may buffer (a body streams through in 64 KiB chunks)
    # How long a connection may take to send a request's headers, and may stay idle between requests:
    # a client that sends its headers slowly (slowloris) is dropped after this.
    "idle_connection_timeout": 20,
    "body_timeout": 300,  # to receive a whole body once its headers are in
}


class BoundedHTTPServer(HTTPServer):
    """Tornado's HTTP server, holding at most `max_connections_per_ip` open connections per
    client address (0: no bound): beyond it a new connection is closed at once."""

    def initialize(self, *args: Any, max_connections_per_ip: int = 0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections_per_ip = max_connections_per_ip
        self._open_per_address: Counter[str] = Counter()

    def handle_stream(self, stream: Any, address: Any) -> None:
        if self.max_connections_per_ip > 0 and isinstance(address, tuple) and address:
            if self._open_per_address[address[0]] >= self.max_connections_per_ip:
                stream.close()
                return
            self._open_per_address[address[0]] += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: Any) -> None:
        address = server_conn.context.address
        if isinstance(address, tuple) and address and address[0] in self._open_per_address:
            self._open_per_address[address[0]] -= 1
            if self._open_per_address[address[0]] <= 0:
                del self._open_per_address[address[0]]
        super().on_close(server_conn)


class MLXServe(Application):
    """`jupyter mlx-manager serve`: pool, runners, downloads, audit, management and OpenAI APIs
    (`mlx/api`, `mlx/v1`) as a standalone server, or as a JupyterHub service."""

    name = "mlx-manager-serve"
    description = __doc__.splitlines()[0]

    ip = Unicode(help="Interface to listen on. Default: 127.0.0.1 (as a Hub service: the host of its url).").tag(
        config=True
    )
    port = Int(help="Port to listen on. Default: 8890 (as a Hub service: the port of its url).").tag(config=True)
    identity = Enum(
        ["auto", "standalone", "jupyterhub"],
        "auto",
        help="Who may sign in: standalone (our accounts and tokens only) or jupyterhub (a Hub service: "
        "Hub OAuth, Hub tokens and ours). auto: jupyterhub when started by JupyterHub as a service.",
    ).tag(config=True)

    _log_formatter_cls = LogFormatter

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("log_format")
    def _default_log_format(self) -> str:
        return "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s]%(end_color)s %(message)s"

    @default("ip")
    def _default_ip(self) -> str:
        return self._service_url().hostname or "127.0.0.1"

    @default("port")
    def _default_port(self) -> int:
        return self._service_url().port or 8890

    def _service_url(self):
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "") if self._hub_mode() else ""
        return urlparse(url)

    def _hub_mode(self) -> bool:
        return self.identity == "jupyterhub" or (self.identity == "auto" and in_hub_service())

    aliases = {
        "ip": "MLXServe.ip",
        "port": "MLXServe.port",
        "identity": "MLXServe.identity",
        "log-level": "Application.log_level",
    }

    def _manager_config(self):
        from ..server_config import server_config as _server_config

        config = _server_config()
        config.merge(self.config)  # the command line wins over the files
        if config.MLXManager.get("pool_url"):
            self.log.warning("ignoring c.MLXManager.pool_url here: this server is the shared model service")
        config.MLXManager.pool_url = ""
        if "owner_username" not in config.MLXManager:
            # No Jupyter login exists here: the first account to register becomes the admin.
            config.MLXManager.owner_username = ""
        return config

    def start(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from jupyter_events import EventLogger

        from ..app import MLXManager

        identity = hub_service_identity() if self._hub_mode() else standalone_identity()
        manager = MLXManager(config=self._manager_config())
        manager.log = self.log
        # What initialize_settings needs of a server: its event bus (audit records as Jupyter events).
        manager.serverapp = SimpleNamespace(event_logger=EventLogger(), log=self.log)
        manager.initialize_settings()
        manager.initialize_handlers()
        web_app = make_web_app(manager, identity)
        behind_hub = identity.kind == "jupyterhub"  # behind the Hub's proxy: every client comes through it
        server = BoundedHTTPServer(
            web_app,
            xheaders=behind_hub,
            max_connections_per_ip=0 if behind_hub else manager.max_connections_per_ip,
            **CONNECTION_LIMITS,
        )
        try:
            server.listen(self.port, self.ip)
        except OSError as exc:
            self.log.error("cannot listen on %s:%s: %s", self.ip, self.port, exc)
            await manager.stop_extension()
            raise SystemExit(1) from None
        where = f"http://{self.ip}:{self.port}{identity.base_url}"
        self.log.info(
            "jupyter-mlx-manager %s serving %smlx/api and %smlx/v1 (identity: %s%s)", __version__, where, where,
            identity.kind, f", Hub service {identity.service_name!r}" if identity.service_name else "",
        )  # fmt: skip
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        self.log.info("shutting down: ending streams, stopping runners")
        server.stop()  # no new connections
        await manager.stop_extension()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), 10)
        self.log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s.%(msecs)03d %(name)s] %(message)s")
    app = MLXServe()
    app.initialize(sys.argv[1:] if argv is None else argv)
    app.start()
    return 0
