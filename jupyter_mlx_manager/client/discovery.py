"""Find the Jupyter server a kernel runs under, with no configuration in the common cases.

Order (SPEC): `JUPYTER_MLX_MANAGER_URL` + `JUPYTER_MLX_MANAGER_TOKEN`; else the server whose
runtime file matches `JPY_PARENT_PID` (the server that launched this kernel); else the
first of `list_running_servers()` (under JupyterHub: only the one serving this user's prefix);
else a JupyterHub single-user server's environment (`JUPYTERHUB_SERVICE_URL`, completed with
`JUPYTERHUB_SERVICE_PREFIX`, and `JUPYTERHUB_API_TOKEN`, which the Hub's single-user server
accepts as its own token).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class ServerNotFound(RuntimeError):
    """No Jupyter server with jupyter-mlx-manager could be found from this process."""


@dataclass(frozen=True)
class ServerInfo:
    url: str  # base URL of the Jupyter server, ending with "/"
    token: str = field(repr=False)  # never shown, so it cannot end up in a saved notebook
    source: str = ""  # how it was found

    @property
    def auth_header(self) -> dict[str, str]:
        """Our JWTs go as Bearer; a Jupyter (or JupyterHub) token as `token`."""
        if not self.token:
            return {}
        scheme = "Bearer" if self.token.count(".") == 2 else "token"
        return {"Authorization": f"{scheme} {self.token}"}


def _from_runtime_file(path: Path, source: str) -> ServerInfo:
    info = json.loads(path.read_text())
    return ServerInfo(_with_slash(info["url"]), info.get("token", ""), source)


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def find_server() -> ServerInfo:
    url = os.environ.get("JUPYTER_MLX_MANAGER_URL")
    if url:
        return ServerInfo(_with_slash(url), os.environ.get("JUPYTER_MLX_MANAGER_TOKEN", ""), "environment")

    from jupyter_core.paths import jupyter_runtime_dir

    parent = os.environ.get("JPY_PARENT_PID")
    if parent:
        runtime_file = Path(jupyter_runtime_dir()) / f"jpserver-{parent}.json"
        if runtime_file.is_file():
            return _from_runtime_file(runtime_file, "JPY_PARENT_PID")

    from jupyter_server.serverapp import list_running_servers

    hub_prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    for info in list_running_servers():
        if hub_prefix and _with_slash(info.get("base_url", "/")) != _with_slash(hub_prefix):
            continue  # under a Hub, another user's (or a stale) server is not ours
        return ServerInfo(_with_slash(info["url"]), info.get("token", ""), "list_running_servers")

    hub = _from_hub_environment()
    if hub is not None:
        return hub

    raise ServerNotFound(
        "no running Jupyter server found; set JUPYTER_MLX_MANAGER_URL (and JUPYTER_MLX_MANAGER_TOKEN) "
        "to the server's URL and an API token"
    )


def _from_hub_environment() -> ServerInfo | None:
    """The single-user server a JupyterHub spawner described in this process's environment."""
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if not token or not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("", "0.0.0.0", "::", "*"):  # bound to all interfaces: connect locally
        host = "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path
    if path in ("", "/"):  # a service URL without the prefix: the prefix is the server's base URL
        path = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/"
    return ServerInfo(_with_slash(urlunsplit((parts.scheme or "http", netloc, path, "", ""))), token, "JupyterHub")
