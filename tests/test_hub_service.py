"""`jupyter mlx-manager serve` as a managed JupyterHub service, and single-user servers that
use it through `c.MLXManager.pool_url` (a real Hub with configurable-http-proxy, the dummy
authenticator and the local process spawner, all on 127.0.0.1).

alice is a Hub admin, bob is not. One Hub for the module: the service `mlx` runs the models;
alice's and bob's servers run none and forward their `mlx/api` and `mlx/v1` routes to it.
"""

from __future__ import annotations

import concurrent.futures
import json
import struct
import sys

import openai
import psutil
import pytest
import requests
import websocket
from hub import find_proxy, jupyterhub
from models import build_models, eos_id
from servers import free_port
from waiting import wait_until

MODEL = "local/tiny"
PROXY = find_proxy()

pytestmark = pytest.mark.skipif(
    PROXY is None,
    reason="configurable-http-proxy not found: `make install` puts it in .venv/chp (npm), "
    "or set $CONFIGURABLE_HTTP_PROXY",
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    models_root, root = tmp_path_factory.mktemp("hubsvc-models"), tmp_path_factory.mktemp("hubsvc")
    # A long context and token limit: a stream that is cancelled is still far from its end.
    building = concurrent.futures.ThreadPoolExecutor(1).submit(build_models, models_root, ["tiny"], None, 131072)
    models = models_root / "models"
    port, service_port = free_port(), free_port()
    service = {
        "name": "mlx",
        "url": f"http://127.0.0.1:{service_port}",
        "command": [
            sys.executable,
            "-m",
            "jupyter_mlx_manager.cli",
            "serve",
            f"--MLXManager.data_dir={root / 'service-data'}",
            f"--MLXManager.model_dirs={models}",
            "--MLXManager.default_keep_alive=-1",
            "--MLXManager.max_tokens_limit=100000",
        ],  # fmt: skip
        "environment": {"JUPYTER_CONFIG_DIR": str(root / "service-config")},  # and no HOME: the Hub gives none
        "oauth_no_confirm": True,
    }
    assert building.result() == models  # before the Hub starts the service, which reads it
    with jupyterhub(
        root,
        users=["alice", "bob"],
        admins=["alice"],
        proxy=PROXY,
        port=port,
        services=[service],
        roles=[{"name": "user", "scopes": ["self", "access:services!service=mlx"]}],
        extra_config='c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", '
        '"access:services!service=mlx"]\nc.JupyterHub.load_groups = {"students": {"users": ["bob"]}}',
        args=[f"--MLXManager.pool_url=http://127.0.0.1:{port}/services/mlx/"],
    ) as running:
        running.tokens = {name: running.token_for(name) for name in ("alice", "bob")}
        running.eos = eos_id(models / "tiny")
        running.wait_for_service("mlx", running.tokens["alice"])
        yield running


def _headers(hub, name):
    return {"Authorization": f"token {hub.tokens[name]}"}


def _service(hub, method, path, **kwargs):
    kwargs.setdefault("timeout", 60)
    return requests.request(method, hub.service_url("mlx") + path, **kwargs)


def _runners_under(pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if "jupyter_mlx_manager.runner" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def _is_single_user(process: psutil.Process) -> bool:
    try:
        return "jupyterhub-singleuser" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def test_hub_tokens_and_admins_on_the_service(hub):
    seen = {}
    for name in ("alice", "bob"):
        reply = _service(hub, "GET", "mlx/api/auth/me", headers=_headers(hub, name))
        assert reply.status_code == 200, (name, reply.text)
        seen[name] = reply.json()
        assert seen[name]["username"] == name and seen[name]["status"] == "approved"
    assert seen["alice"]["is_admin"] is True  # a Hub admin is an admin here
    assert seen["bob"]["is_admin"] is False  # a Hub user is an approved user
    refused = _service(hub, "GET", "mlx/api/users", headers=_headers(hub, "bob"))
    assert refused.status_code == 403 and refused.json()["reason"] == "admin_required"
    assert _service(hub, "GET", "mlx/api/users", headers=_headers(hub, "alice")).status_code == 200
    for headers in ({}, {"Authorization": "token not-a-hub-token"}):
        none = _service(hub, "GET", "mlx/api/auth/me", headers=headers, allow_redirects=False)
        assert none.status_code == 401, none.text
    # Our own API tokens of the service, with the openai SDK through the proxy, no cookie.
    created = _service(hub, "POST", "mlx/api/auth/tokens", json={"name": "sdk"}, headers=_headers(hub, "bob"))
    assert created.status_code == 201, created.text
    client = openai.OpenAI(
        base_url=hub.service_url("mlx") + "mlx/v1", api_key=created.json()["token"], max_retries=0, timeout=120
    )
    assert MODEL in [m.id for m in client.models.list().data]


def test_group_budgets_follow_the_hubs_groups(hub):
    """bob is in the Hub group `students`, alice is not: a students' budget binds bob only."""
    alice, bob = _headers(hub, "alice"), _headers(hub, "bob")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    budget = {"groups": {"students": {"tokens_per_day": 1}}}
    assert _service(hub, "PUT", "mlx/api/budgets", json=budget, headers=bob).status_code == 403
    assert _service(hub, "PUT", "mlx/api/budgets", json=budget, headers=alice).status_code == 200
    try:
        first = _service(hub, "POST", "mlx/v1/chat/completions", json=chat, headers=bob)
        assert first.status_code == 200, first.text  # nothing spent yet today
        refused = _service(hub, "POST", "mlx/v1/chat/completions", json=chat, headers=bob)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        assert int(refused.headers["Retry-After"]) > 0
        own = _service(hub, "GET", "mlx/api/budgets", headers=bob).json()
        assert own["windows"]["tokens_per_day"]["limit"] == 1 and own["windows"]["tokens_per_day"]["remaining"] == 0
        assert own["groups"] == ["students"]
        # One of our own API tokens carries no groups: the ones the Hub gave bob still bind him.
        created = _service(hub, "POST", "mlx/api/auth/tokens", json={"name": "budget"}, headers=bob)
        api_token = {"Authorization": f"Bearer {created.json()['token']}"}
        refused = _service(hub, "POST", "mlx/v1/chat/completions", json=chat, headers=api_token)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        for _ in range(2):  # alice is no student
            assert _service(hub, "POST", "mlx/v1/chat/completions", json=chat, headers=alice).status_code == 200
    finally:
        _service(hub, "PUT", "mlx/api/budgets", json={"groups": {"students": None}}, headers=alice)


def test_browser_signs_in_with_hub_oauth(hub):
    session = hub.login_session("bob")
    home = session.get(hub.service_url("mlx"), timeout=60)  # → Hub OAuth → oauth_callback → back
    assert home.status_code == 200 and home.url == hub.service_url("mlx"), (home.url, home.text[:300])
    assert home.json()["identity"] == "jupyterhub" and home.json()["user"]["username"] == "bob"
    me = session.get(hub.service_url("mlx") + "mlx/api/auth/me", timeout=30)
    assert me.status_code == 200 and me.json()["client"] == "browser", me.text
    refused = session.post(hub.service_url("mlx") + "mlx/api/auth/ticket", timeout=30)
    assert refused.status_code == 403 and refused.json()["reason"] == "xsrf", refused.text
    xsrf = session.cookies.get("_xsrf", path="/services/mlx/")
    ticket = session.post(hub.service_url("mlx") + "mlx/api/auth/ticket", headers={"X-XSRFToken": xsrf}, timeout=30)
    assert ticket.status_code == 201, ticket.text


def _chat_through(hub, name, api_key):
    client = openai.OpenAI(base_url=hub.user_url(name) + "mlx/v1", api_key=api_key, max_retries=0, timeout=120)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Hi from {name}"}], max_tokens=5, stream=True
        )
    )
    assert chunks and chunks[-1].choices[-1].finish_reason in ("length", "stop"), chunks[-1:]
    return client


def test_single_user_servers_share_the_service_models(hub):
    hub.start_servers("alice", "bob")
    # Each chats through their own server: with a Hub token (as a kernel has), and bob also with
    # an API token of his server (ours, so it is checked there and never forwarded).
    _chat_through(hub, "alice", hub.tokens["alice"])
    local = requests.post(
        hub.user_url("bob") + "mlx/api/auth/tokens", json={"name": "sdk"}, headers=_headers(hub, "bob"), timeout=30
    )
    assert local.status_code == 201, local.text
    client = _chat_through(hub, "bob", local.json()["token"])
    assert MODEL in [m.id for m in client.models.list().data]
    other = requests.get(
        hub.service_url("mlx") + "mlx/api/auth/me", headers={"Authorization": f"Bearer {local.json()['token']}"}
    )
    assert other.status_code == 401  # bob's server's token means nothing to the service

    # Seen through bob's server, the service knows him as bob, an approved user.
    me = requests.get(hub.user_url("bob") + "mlx/api/auth/me", headers=_headers(hub, "bob"), timeout=30)
    assert me.status_code == 200 and me.json()["username"] == "bob" and me.json()["is_admin"] is False, me.text

    # One runner for the model, in the service; none under the users' servers.
    pool = _service(hub, "GET", "mlx/api/pool", headers=_headers(hub, "alice")).json()
    assert [m["model"] for m in pool["models"]] == [MODEL], pool
    servers = [p for p in psutil.Process(hub.process.pid).children(recursive=True) if _is_single_user(p)]
    assert len(servers) == 2 and not any(_runners_under(p.pid) for p in servers)  # not even a warm spare
    assert pool["models"][0]["pid"] in [r.pid for r in _runners_under(hub.process.pid)]
    assert pool["models"][0]["requests"] >= 2
    # The audit, on the service, has both.
    records = _service(hub, "GET", "mlx/api/audit", params={"limit": 200}, headers=_headers(hub, "alice")).json()
    chat_users = {r["user"] for r in records["records"] if r.get("model") == MODEL and r.get("endpoint")}
    assert {"alice", "bob"} <= chat_users, records["records"][:5]

    # Roles are the service's: bob cannot force-unload, alice can (both through their servers).
    body = {"model": MODEL, "force": True}
    refused = requests.post(hub.user_url("bob") + "mlx/api/pool/unload", json=body, headers=_headers(hub, "bob"))
    assert refused.status_code == 403, refused.text


def test_audit_websocket_and_sse_through_a_server(hub):
    ticket = requests.post(hub.user_url("bob") + "mlx/api/auth/ticket", headers=_headers(hub, "bob"), timeout=30)
    assert ticket.status_code == 201, ticket.text
    url = hub.user_url("bob").replace("http://", "ws://") + "mlx/api/audit/ws"
    ws = websocket.create_connection(f"{url}?token={ticket.json()['token']}&replay=2", timeout=30)
    try:
        message = json.loads(ws.recv())
        assert message["type"] == "record" and message["data"]["user"] == "bob", message
    finally:
        ws.close()
    ws = websocket.create_connection(url, header=["Sec-Fetch-Mode: websocket"], timeout=30)
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and struct.unpack("!H", data[:2])[0] == 1008
    ws.close()
    # A streamed export passes through too.
    export = requests.get(
        hub.user_url("bob") + "mlx/api/audit/export",
        params={"format": "csv", "token": ticket.json()["token"]},
        timeout=30,
    )
    assert export.status_code == 200 and export.text.startswith("id,"), export.text[:200]
    assert "alice" not in export.text  # bob sees his own records only


def test_client_that_leaves_cancels_the_upstream_generation(hub):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Go on"}],
        "max_tokens": 100000,
        "stream": True,
        "logit_bias": {str(hub.eos): -100},
    }  # no early EOS, and minutes of tokens: the generation is still running when the client leaves
    # Leaving at several points of the stream: before the first token, and while tokens flow (when a
    # relay's write finds the client gone as its departure is noticed, both must close upstream).
    for leave_after in (1, 2, 3, 5, 8, 2, 3):
        with requests.post(
            hub.user_url("alice") + "mlx/v1/chat/completions", json=body, headers=_headers(hub, "alice"), stream=True
        ) as reply:
            assert reply.status_code == 200, reply.text
            events = (line for line in reply.iter_lines() if line.startswith(b"data: {"))
            request_id = reply.headers["X-Request-ID"]
            for _ in range(leave_after):
                next(events)

        def record() -> dict | None:
            records = _service(
                hub, "GET", "mlx/api/audit", params={"user": "alice", "limit": 5}, headers=_headers(hub, "alice")
            )
            mine = [r for r in records.json()["records"] if r.get("request_id") == request_id]
            return mine[0] if mine else None

        # The service sees the upstream connection close and cancels.
        mine = wait_until(
            record, f"the record of the request left after {leave_after} events (still generating?)", interval=0.2
        )
        assert mine["status"] == "cancelled", (leave_after, mine)


def test_admin_force_unloads_through_her_server(hub):
    body = {"model": MODEL, "force": True}
    done = requests.post(hub.user_url("alice") + "mlx/api/pool/unload", json=body, headers=_headers(hub, "alice"))
    assert done.status_code == 200, done.text
    assert _service(hub, "GET", "mlx/api/pool", headers=_headers(hub, "alice")).json()["models"] == []
