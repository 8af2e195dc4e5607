"""Fixtures for the browser tests: a real `jupyter lab` and a headless Chromium.

The server runs with its own HOME, Jupyter config/data/runtime dirs and MLX data dir
(all temporary), but in this Python environment, so the installed labextension and
server extension (under `sys.prefix`) are found as they are for users.

Chromium is the system one (`/usr/bin/chromium`, override with env `CHROMIUM`); the
tests never download a browser. Screenshots and the server log go to
`tests/ui/artifacts/` (override with env `UI_ARTIFACTS`).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from waiting import wait_until

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_TIMEOUT = float(os.environ.get("UI_STARTUP_TIMEOUT", "90"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ui: browser test against a real JupyterLab")


# tests/conftest.py loads pytest-jupyter, whose autouse fixtures would pick up the event loop
# of Playwright's sync API as "the" loop and try to close it after each test. These tests run
# their server in a subprocess and need neither fixture.
@pytest.fixture
def jp_asyncio_loop():
    yield None


@pytest.fixture
def jp_server_cleanup():
    yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("UI_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class LabServer:
    def __init__(
        self, url: str, token: str, process: subprocess.Popen, log: Path, data_dir: Path, jwt_secret: str, hub=None
    ):
        self.url = url  # ends with "/"
        self.hub = hub  # a jupyter_mlx_manager.devhub.DevHub the server downloads from (HF_ENDPOINT), or None
        self.token = token
        self.process = process
        self.log = log
        self.data_dir = data_dir
        self.jwt_secret = jwt_secret  # --MLXManager.jwt_secret, to sign tokens for other users

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """As the owner (Jupyter token), unless the caller passes its own Authorization."""
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def jwt_for(self, user_id: int, lifetime: int = 3600) -> str:
        """An access token for any user (even a pending one, who cannot log in)."""
        import jwt

        now = int(time.time())
        claims = {"sub": str(user_id), "typ": "access", "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path):
    root = tmp_path_factory.mktemp("lab")
    dirs = {name: root / name for name in ("home", "notebooks", "data", "config", "jdata", "runtime", "hf")}
    for path in dirs.values():
        path.mkdir()
    # No "get Jupyter news?" toast over the screenshots, and no requests to the internet.
    settings = dirs["config"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port = _free_port()
    token = secrets.token_hex(24)
    jwt_secret = secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "HOME": str(dirs["home"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["jdata"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["home"] / ".ipython"),
        "HF_HOME": str(dirs["hf"]),
        "HF_HUB_OFFLINE": "1",
    }
    # Never let a developer's own config or token leak into the test server.
    for name in ("JUPYTER_TOKEN", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_MLX_MANAGER_URL"):
        env.pop(name, None)
    # The labextension as this checkout last built it (`jlpm build` writes it into the package),
    # ahead of the copy pip installed under sys.prefix, which a rebuild does not update.
    built = Path(__file__).resolve().parents[2] / "jupyter_mlx_manager" / "labextension"
    if (built / "package.json").is_file():
        extensions = root / "jupyter-path" / "labextensions"
        extensions.mkdir(parents=True)
        (extensions / "jupyter-mlx-manager").symlink_to(built, target_is_directory=True)
        env["JUPYTER_PATH"] = str(extensions.parent)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.allow_root=True",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={dirs['notebooks']}",
        f"--MLXManager.data_dir={dirs['data']}",
        f"--MLXManager.jwt_secret={jwt_secret}",
    ]
    # The offline demo model (random weights, about two seconds): local/tiny-demo.
    demo = subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(dirs["data"]), "demo-model"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if demo.returncode != 0:
        pytest.fail(f"demo-model failed:\n{demo.stdout}\n{demo.stderr}")
    # A local stand-in for the Hub, where the server has one: it serves the demo model's files as
    # Hub repos, so searching and downloading work offline (nothing reaches the internet).
    hub = _start_devhub(dirs["data"] / "models" / "tiny-demo")
    if hub is not None:
        env.pop("HF_HUB_OFFLINE", None)
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    log = artifacts_dir / "jupyter-lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    server = LabServer(url, token, process, log, dirs["data"], jwt_secret, hub)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            return server.get("api/status").status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(answers, f"jupyter lab to answer (see {log})", timeout=STARTUP_TIMEOUT, interval=0.5)
        yield server
    finally:
        _stop(process)
        if hub is not None:
            hub.stop()


HUB_REPOS = ("mlx-test/tiny-chat", "mlx-test/tiny-slow")


def _start_devhub(model_folder: Path):
    try:
        from jupyter_mlx_manager.devhub import DevHub
    except ImportError:  # a server without downloads yet: those tests skip
        return None
    hub = DevHub()
    for repo_id in HUB_REPOS:
        hub.add_repo(repo_id, model_folder, downloads=42, likes=3)
    hub.start()
    return hub


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def console_log() -> list[str]:
    """Console messages and uncaught errors of the test's page."""
    return []


@pytest.fixture
def page(browser, artifacts_dir: Path, console_log: list[str], request: pytest.FixtureRequest):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("console", lambda msg: console_log.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: console_log.append(f"pageerror: {err}"))
    yield page
    (artifacts_dir / f"{request.node.name}.console.log").write_text("\n".join(console_log) + "\n")
    context.close()
