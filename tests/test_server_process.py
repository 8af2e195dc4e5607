"""A real `jupyter server` process: starts with `allow_unauthenticated_access=False`, warns
about weak secrets, answers plain HTTP, and the CLI works on its database."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import sys

import pytest
import requests
from servers import jupyter_server
from waiting import wait_until

from jupyter_mlx_manager.auth.jwt_tokens import PLACEHOLDER_SECRET


@pytest.fixture(scope="session")
def server_models(tmp_path_factory):
    from models import build_models

    return build_models(tmp_path_factory.mktemp("server-models"), ["tiny-demo"])


@pytest.fixture
def server(tmp_path, server_models):
    with jupyter_server(
        tmp_path,
        "--ServerApp.allow_unauthenticated_access=False",
        f"--MLXManager.jwt_secret={PLACEHOLDER_SECRET}",
        "--MLXManager.owner_username=owner",
        f"--MLXManager.model_dirs={server_models}",
    ) as running:
        yield {
            "url": running.url, "token": running.token, "data_dir": running.data_dir, "log": running.log,
            "process": running.process, "env": running.env,
        }  # fmt: skip


def test_server_starts_strict_and_warns_about_placeholder_secret(server):
    headers = {"Authorization": f"token {server['token']}"}
    status = requests.get(server["url"] + "mlx/api/status", headers=headers, timeout=10)
    assert status.status_code == 200 and status.json()["user"]["username"] == "owner"
    assert requests.get(server["url"] + "mlx/api/status", timeout=10).status_code == 401
    server["process"].send_signal(signal.SIGTERM)
    assert server["process"].wait(30) == 0
    log = server["log"].read_text()
    assert "JWT secret" in log
    assert "jupyter_mlx_manager | extension was successfully loaded" in log
    # Other extensions may be listed by Jupyter's auth check; none of our routes may be.
    assert not re.search(r"registered for \S*mlx/", log), log
    assert server["token"] not in log


def test_cli_manages_users_and_tokens_on_a_live_server(server):
    url = server["url"]
    session = requests.Session()
    reply = session.post(
        url + "mlx/api/auth/register", json={"username": "kim", "password": "long enough pw"}, timeout=10
    )
    assert reply.status_code == 201 and reply.json()["status"] == "pending"

    def cli(*args):
        env = {**server["env"], "JUPYTER_MLX_MANAGER_JWT_SECRET": PLACEHOLDER_SECRET}
        return subprocess.run(
            [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(server["data_dir"]), *args],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip

    listed = cli("users", "list")
    assert listed.returncode == 0 and "kim" in listed.stdout and "pending" in listed.stdout
    assert cli("users", "approve", "kim").returncode == 0
    login = session.post(url + "mlx/api/auth/login", json={"username": "kim", "password": "long enough pw"}, timeout=10)
    assert login.status_code == 200

    created = cli("token", "create", "--user", "kim")
    assert created.returncode == 0
    api_token = created.stdout.strip()
    me = session.get(url + "mlx/api/auth/me", headers={"Authorization": f"Bearer {api_token}"}, timeout=10)
    assert me.status_code == 200
    assert me.json()["username"] == "kim" and me.json()["client"] == "api_token"

    assert cli("users", "disable", "kim").returncode == 0
    me = session.get(url + "mlx/api/auth/me", headers={"Authorization": f"Bearer {api_token}"}, timeout=10)
    assert me.status_code == 403 and me.json()["reason"] == "disabled"
    assert cli("users", "approve", "nobody").returncode == 1
    assert cli("users", "disable", "owner").returncode == 1  # the last admin stays


def test_generated_secret_file_is_private(tmp_path, caplog):
    import logging

    from jupyter_mlx_manager.auth import resolve_secret

    log = logging.getLogger("test-secret")
    first = resolve_secret("", tmp_path, log)
    assert len(first) >= 32
    assert stat.S_IMODE((tmp_path / "jwt_secret").stat().st_mode) == 0o600
    assert resolve_secret("", tmp_path, log) == first
    assert not any("JWT secret" in r.getMessage() for r in caplog.records)
    resolve_secret("short", tmp_path, log)
    assert any("JWT secret" in r.getMessage() for r in caplog.records)


def test_every_route_is_authenticated_for_jupyter(jp_serverapp):
    """The extension-template auth check, per route: no method lacks an auth marker."""
    from jupyter_mlx_manager.handlers import ROUTES

    web_app = jp_serverapp.web_app
    assert web_app.settings["allow_unauthenticated_access"] is False
    missing = [line for path, handler in ROUTES for line in web_app._check_handler_auth(path, handler)]
    assert missing == []


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_runner_outlives_the_server(server, how):
    import psutil

    headers = {"Authorization": f"token {server['token']}"}
    reply = requests.post(
        server["url"] + "mlx/api/pool/load", json={"model": "local/tiny-demo"}, headers=headers, timeout=120
    )
    assert reply.status_code == 200, reply.text
    runner = psutil.Process(reply.json()["pid"])
    assert runner.is_running()
    server["process"].send_signal(getattr(signal, how))
    server["process"].wait(30)
    try:
        runner.wait(10)
    except psutil.TimeoutExpired:
        runner.kill()
        pytest.fail(f"the runner survived the server's {how}")


def test_acknowledged_audit_records_survive_sigkill(server, server_models):
    """A burst of chat requests, the server killed mid-burst: every answered request is on disk."""
    import sqlite3
    import threading

    from models import eos_id

    headers = {"Authorization": f"token {server['token']}"}
    url = server["url"] + "mlx/v1/chat/completions"
    body = {
        "model": "local/tiny-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "logit_bias": {str(eos_id(server_models / "tiny-demo")): -100},
    }  # fmt: skip
    assert requests.post(url, json=body, headers=headers, timeout=120).status_code == 200  # loaded
    acknowledged: list[str] = []
    stop = threading.Event()

    def burst():
        while not stop.is_set():
            try:
                reply = requests.post(url, json=body, headers=headers, timeout=30)
            except requests.RequestException:
                return
            if reply.status_code == 200:
                acknowledged.append(reply.headers["X-Request-ID"])

    threads = [threading.Thread(target=burst) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) > 10, "a burst of answered requests", timeout=60, interval=0.05)
    server["process"].send_signal(signal.SIGKILL)  # mid-burst: the threads still send
    server["process"].wait(30)
    stop.set()
    for thread in threads:
        thread.join(40)
    assert len(acknowledged) > 10

    db = sqlite3.connect(server["data_dir"] / "mlx_manager.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in db.execute("SELECT request_id FROM audit_log WHERE action = 'chat.completions'")}
    finally:
        db.close()
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged requests have no audit record"
