"""Start a real JupyterHub (configurable-http-proxy, dummy authenticator, local process spawner,
everything on 127.0.0.1) whose single-user servers run the extension."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from servers import free_port
from waiting import wait_until

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "hub-admin-token-" + os.urandom(12).hex()
PASSWORD = "any password"  # the dummy authenticator takes any


def find_proxy() -> str | None:
    """configurable-http-proxy: the one `make install` puts in the venv, else one on PATH."""
    for candidate in (
        os.environ.get("CONFIGURABLE_HTTP_PROXY", ""),
        str(REPO / ".venv" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"),
        str(VENV_BIN.parent / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"),
        shutil.which("configurable-http-proxy") or "",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CONFIG = """
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{root}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = "{root}/proxy.pid"

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.Authenticator.admin_users = {admins!r}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.Spawner.environment = {environment!r}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.Spawner.default_url = "/lab"

def _per_user_data_dir(spawner):
    spawner.args = [*spawner.args, "--MLXManager.data_dir={root}/data/" + spawner.user.name]

c.Spawner.pre_spawn_hook = _per_user_data_dir

c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}] + {services!r}
c.JupyterHub.load_roles = [
    {{"name": "test-admin", "services": ["test-admin"],
      "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "access:servers"]}},
] + {roles!r}
{extra_config}
"""


@dataclass
class RunningHub:
    url: str  # the proxy's public URL, ending with "/"
    root: Path
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.root / "hub.log"

    def api(self, method: str, path: str, token: str = ADMIN_TOKEN, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.request(
            method, self.url + "hub/api/" + path, headers={"Authorization": f"token {token}"}, **kwargs
        )

    def user_url(self, name: str) -> str:
        return f"{self.url}user/{name}/"

    def service_url(self, name: str) -> str:
        return f"{self.url}services/{name}/"

    def wait_for_service(self, name: str, token: str, timeout: float = 90) -> None:
        """Until a managed service answers through the proxy (the Hub starts it in the background)."""

        def answers() -> bool:
            try:
                reply = requests.get(self.service_url(name), headers={"Authorization": f"token {token}"}, timeout=5)
            except requests.RequestException:
                return False
            return reply.status_code == 200

        try:
            wait_until(answers, f"service {name} to answer", timeout, interval=0.5)
        except AssertionError as error:
            raise RuntimeError(f"service {name} did not start:\n" + self.log_text()[-4000:]) from error

    def token_for(self, name: str) -> str:
        """A Hub API token of `name` (the user's own permissions), as a kernel or a script has."""
        reply = self.api("POST", f"users/{name}/tokens", json={"note": "test", "expires_in": 3600})
        assert reply.status_code == 201, reply.text
        return reply.json()["token"]

    def start_servers(self, *names: str, timeout: float = 120) -> None:
        for name in names:
            reply = self.api("POST", f"users/{name}/server")
            assert reply.status_code in (201, 202, 400), reply.text  # 400: already running
        waiting = set(names)

        def all_ready() -> bool:
            for name in list(waiting):
                server = self.api("GET", f"users/{name}").json().get("servers", {}).get("")
                if server and server.get("ready"):
                    waiting.discard(name)
            return not waiting

        try:
            wait_until(all_ready, "the users' servers to be ready", timeout, interval=0.5)
        except AssertionError as error:
            raise RuntimeError(f"servers of {sorted(waiting)} did not start:\n" + self.log_text()[-4000:]) from error

    def login_session(self, name: str) -> requests.Session:
        """A browser-like session signed in through the Hub's login form (Hub cookie + OAuth
        into the user's server, which sets that server's cookie and its _xsrf cookie)."""
        session = requests.Session()
        page = session.get(self.url + "hub/login", timeout=30)
        page.raise_for_status()
        xsrf = session.cookies.get("_xsrf", path="/hub/")
        reply = session.post(
            self.url + "hub/login",
            data={"username": name, "password": PASSWORD, "_xsrf": xsrf},
            timeout=30,
        )
        reply.raise_for_status()
        return session

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def jupyterhub(
    root: Path,
    *,
    users: list[str],
    admins: list[str],
    roles: list[dict] | None = None,
    args: list[str] | None = None,
    environment: dict[str, str] | None = None,
    proxy: str,
    timeout: float = 60,
    services: list[dict] | None = None,
    extra_config: str = "",
    port: int | None = None,
) -> Iterator[RunningHub]:
    """A Hub on free ports (or the public `port` given) with everything (database, cookie
    secret, users' homes and data dirs) under `root`; stopped with SIGTERM, which also stops
    the users' servers and its managed `services` (extra `c.JupyterHub.services` entries).
    `extra_config`: more jupyterhub_config.py lines."""
    port, hub_port, proxy_api_port = port or free_port(), free_port(), free_port()
    config = CONFIG.format(
        port=port,
        hub_port=hub_port,
        proxy_api_port=proxy_api_port,
        root=root,
        proxy=proxy,
        users=set(users),
        admins=set(admins),
        singleuser=str(VENV_BIN / "jupyterhub-singleuser"),
        args=["--allow-root", "--ServerApp.jpserver_extensions=jupyter_server_terminals=False", *(args or [])],
        environment=environment or {},
        admin_token=ADMIN_TOKEN,
        roles=roles or [],
        services=services or [],
        extra_config=extra_config,
    )
    (root / "jupyterhub_config.py").write_text(config)
    (root / "home").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_MLX_MANAGER", "JPY_", "JUPYTERHUB_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    with open(root / "hub.log", "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(root / "jupyterhub_config.py")],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    hub = RunningHub(f"http://127.0.0.1:{port}/", root, process)

    def answers() -> bool:
        try:
            return hub.api("GET", "", timeout=2).ok
        except requests.ConnectionError:
            assert process.poll() is None, "JupyterHub exited"
            return False

    try:
        wait_until(answers, "JupyterHub to answer", timeout, interval=0.3)
    except AssertionError as error:
        _stop(process)
        raise RuntimeError("JupyterHub did not start:\n" + hub.log_text()[-4000:]) from error
    try:
        yield hub
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the Hub (it stops the proxy and the servers it spawned); then make sure
    nothing of its process group is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
