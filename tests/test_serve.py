"""`jupyter mlx-manager serve` as a standalone server (no Jupyter, no Hub) in a real process:
our accounts and tokens only, the unmodified openai SDK, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import openai
import psutil
import pytest
import requests
import websocket
from models import build_models
from servers import free_port, wait_for_start

MODEL = "local/tiny-demo"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    models = build_models(tmp_path_factory.mktemp("serve-models"), ["tiny-demo"])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_MLX_MANAGER", "JPY_", "JUPYTERHUB_"))}
    env.update(JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed at the end of the module
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "serve", "--ip", "127.0.0.1", "--port", str(port),
         f"--MLXManager.data_dir={root / 'data'}", f"--MLXManager.model_dirs={models}",
         "--MLXManager.default_keep_alive=-1"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    wait_for_start(process, url, root / "serve.log")
    process.url, process.root = url, root
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def _post(serve, path, **kwargs):
    return requests.post(serve.url + path, timeout=30, **kwargs)


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_home_says_standalone(serve):
    home = requests.get(serve.url, timeout=10)
    assert home.status_code == 200 and home.json()["identity"] == "standalone", home.text
    assert home.json()["api"] == "/mlx/api/" and home.json()["openai"] == "/mlx/v1/"


def test_accounts_tokens_and_the_openai_sdk(serve):
    # No owner account here: the first to register is the admin; the next one waits.
    first = _post(serve, "mlx/api/auth/register", json={"username": "ann", "password": PASSWORD})
    assert first.status_code == 201 and first.json()["is_admin"] is True, first.text
    second = _post(serve, "mlx/api/auth/register", json={"username": "ben", "password": PASSWORD})
    assert second.status_code == 201 and second.json()["status"] == "pending", second.text
    login = _post(serve, "mlx/api/auth/login", json={"username": "ann", "password": PASSWORD})
    assert login.status_code == 200, login.text
    access = login.json()["access_token"]
    me = requests.get(serve.url + "mlx/api/auth/me", headers=_bearer(access), timeout=10)
    assert me.status_code == 200 and me.json()["username"] == "ann" and me.json()["client"] == "session"
    # A bearer POST needs no XSRF (no cookie exists here).
    created = _post(serve, "mlx/api/auth/tokens", json={"name": "sdk"}, headers=_bearer(access))
    assert created.status_code == 201, created.text
    token = created.json()["token"]

    client = openai.OpenAI(base_url=serve.url + "mlx/v1", api_key=token, max_retries=0, timeout=120)
    assert MODEL in [m.id for m in client.models.list().data]
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
        )
    )
    assert chunks and chunks[-1].choices[-1].finish_reason in ("length", "stop")
    pool = requests.get(serve.url + "mlx/api/pool", headers=_bearer(token), timeout=10).json()
    assert [m["model"] for m in pool["models"]] == [MODEL]

    # No credential, a Jupyter-style token, a forged JWT: 401 (the SDK's AuthenticationError).
    for headers in ({}, {"Authorization": "token x"}, {"Authorization": "Bearer a.b.c"}):
        refused = requests.get(serve.url + "mlx/api/auth/me", headers=headers, timeout=10)
        assert refused.status_code == 401, (headers, refused.text)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=serve.url + "mlx/v1", api_key="x", max_retries=0).models.list()
    # A pending user's token: 403.
    pending = _post(serve, "mlx/api/auth/login", json={"username": "ben", "password": PASSWORD})
    assert pending.status_code == 403, pending.text
    serve.api_token = token


def test_sigterm_stops_runners_and_closes_sockets(serve):
    token = getattr(serve, "api_token", None)
    if token is None:
        pytest.skip("needs the token of the test before")
    pool = requests.get(serve.url + "mlx/api/pool", headers=_bearer(token), timeout=10).json()
    runner = psutil.Process(pool["models"][0]["pid"])
    assert runner.is_running()
    ticket = _post(serve, "mlx/api/auth/ticket", headers=_bearer(token)).json()["token"]
    ws = websocket.create_connection(serve.url.replace("http", "ws") + f"mlx/api/audit/ws?token={ticket}", timeout=20)
    try:
        serve.send_signal(signal.SIGTERM)
        opcode, data = ws.recv_data(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:  # live records before the close are fine
            assert json.loads(data)["type"] in ("record", "ping", "gap")
            opcode, data = ws.recv_data(control_frame=True)
        assert struct.unpack("!H", data[:2])[0] == 1001
    finally:
        ws.close()
    assert serve.wait(30) == 0
    psutil.wait_procs([runner], timeout=10)
    assert not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE
    log = Path(serve.root / "serve.log").read_text()
    assert "stopped" in log and "Traceback" not in log, log[-3000:]
    assert token not in log and ticket not in log


def test_pool_url_unreachable_is_a_502(tmp_path):
    """A server with pool_url runs no models; when the service is down it says so (502), in each
    area's envelope, and it still serves its own auth routes."""
    from servers import jupyter_server

    dead = f"http://127.0.0.1:{free_port()}/services/mlx/"
    with jupyter_server(tmp_path, f"--MLXManager.pool_url={dead}", env={"JUPYTERHUB_API_TOKEN": "x" * 32}) as server:
        status = requests.get(server.url + "mlx/api/status", headers=server.headers, timeout=30)
        assert status.status_code == 502 and status.json()["reason"] == "pool_unreachable", status.text
        assert dead in status.json()["message"]
        chat = requests.post(
            server.url + "mlx/v1/chat/completions", json={"model": MODEL, "messages": []}, headers=server.headers
        )
        assert chat.status_code == 502 and chat.json()["error"]["code"] == "pool_unreachable", chat.text
        ticket = requests.post(server.url + "mlx/api/auth/ticket", headers=server.headers, timeout=30)
        assert ticket.status_code == 201, ticket.text  # served here: this server's own credential
        assert requests.get(server.url + "mlx/api/status", timeout=30).status_code == 401
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert not [p for p in children if "jupyter_mlx_manager.runner" in _cmdline(p)]  # not even a spare


def test_the_forwarder_never_leaves_the_services_mlx_paths():
    """A decoded `..` (sent as %2e%2e) or an encoded `?`/`#` would carry this server's Hub token
    to other paths of the service's host: such paths are no endpoint at all."""
    from jupyter_mlx_manager.errors import NotFound
    from jupyter_mlx_manager.handlers.proxy import SharedService

    service = SharedService("http://127.0.0.1:8000/services/mlx/", log=None)
    assert service.target("api/pool", [("token", "ticket"), ("a", "1")]) == (
        "http://127.0.0.1:8000/services/mlx/mlx/api/pool?a=1"
    )
    for path in ("api/../../../../hub/api/user", "api/.", "api//x", "api/x?y=1", "api/x#y", "api/%2e%2e", "v1\\x"):
        with pytest.raises(NotFound):
            service.target(path, [])


def _cmdline(process: psutil.Process) -> str:
    """A child's command line; "" for one that has exited meanwhile (a zombie runs nothing)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
