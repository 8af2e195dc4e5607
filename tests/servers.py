"""Start a real `jupyter server` process with the extension, for tests that need one
outside the test's own event loop (plain HTTP clients, kernels, signals)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    token: str
    process: subprocess.Popen
    root: Path
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "runtime"

    @property
    def log(self) -> Path:
        return self.root / "server.log"


@contextlib.contextmanager
def jupyter_server(root: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """A server on a free port with its own config, runtime and data dirs under `root`;
    stopped with SIGTERM at the end unless the test already stopped it."""
    port, token = free_port(), "jupyter-token-" + os.urandom(8).hex()
    # No spare runner unless the test asks for one (it would only cost CPU at start).
    no_spare = () if any("warm_runner" in arg for arg in args) else ("--MLXManager.warm_runner=False",)
    server_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_MLX_MANAGER", "JPY_", "JUPYTERHUB_"))
    }
    server_env.update(JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"), **(env or {}))
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.jpserver_extensions=jupyter_server_terminals=False",
             f"--MLXManager.data_dir={root / 'data'}", *no_spare, *args],
            stdout=log, stderr=subprocess.STDOUT, env=server_env,
        )  # fmt: skip
    server = RunningServer(f"http://127.0.0.1:{port}/", token, process, root, server_env)
    wait_for_start(process, server.url + "api/status", server.log, "the server", server.headers)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for_start(
    process: subprocess.Popen, url: str, log: Path, name: str = "serve", headers: dict | None = None
) -> None:
    """Until the server `process` (Jupyter, or `jupyter mlx-manager serve`) answers at `url`; a start
    that fails kills it and says why (its log)."""

    def answers() -> bool:
        try:
            return requests.get(url, headers=headers, timeout=2).ok
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or not answering yet
            assert process.poll() is None, f"{name} exited"
            return False

    try:
        wait_until(answers, f"{name} to answer", timeout=60, interval=0.3)
    except AssertionError as error:
        process.kill()
        raise RuntimeError(f"{name} did not start:\n" + log.read_text()[-3000:]) from error
