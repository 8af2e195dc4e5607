"""Single-user servers under a real JupyterHub (configurable-http-proxy from npm, the dummy
authenticator, the local process spawner, all on 127.0.0.1): Hub names and roles, our JWTs
through the proxy with no Hub cookie, tickets on WebSocket and SSE URLs, XSRF, the kernel client.

alice is a Hub admin, bob is not; bob has access to alice's server. One Hub for the module.
"""

from __future__ import annotations

import concurrent.futures
import json
import struct
from pathlib import Path

import openai
import pytest
import requests
import websocket
from hub import find_proxy, jupyterhub
from models import build_models
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
    models_root, root = tmp_path_factory.mktemp("hub-models"), tmp_path_factory.mktemp("jupyterhub")
    # The model is built while the Hub starts; the servers, which read it, start after both.
    building = concurrent.futures.ThreadPoolExecutor(1).submit(build_models, models_root, ["tiny"])
    models = models_root / "models"
    with jupyterhub(
        root,
        users=["alice", "bob"],
        admins=["alice"],
        proxy=PROXY,
        roles=[{"name": "bob-visits-alice", "scopes": ["access:servers!user=alice"], "users": ["bob"]}],
        args=[f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=-1"],
        # The stricter setting: a WebSocket cannot ride on the Hub cookie, only on a token.
        environment={"JUPYTERHUB_ALLOW_WEBSOCKET_COOKIE_AUTH": "0"},
    ) as running:
        assert building.result() == models
        running.start_servers("alice", "bob")
        running.tokens = {name: running.token_for(name) for name in ("alice", "bob")}
        running.ours = []  # every JWT of ours the tests send: none may reach the Hub or a log
        yield running


def _hub_headers(hub, name):
    return {"Authorization": f"token {hub.tokens[name]}"}


def _get(hub, server, path, **kwargs):
    kwargs.setdefault("timeout", 30)
    return requests.get(hub.user_url(server) + path, **kwargs)


def _post(hub, server, path, **kwargs):
    kwargs.setdefault("timeout", 30)
    return requests.post(hub.user_url(server) + path, **kwargs)


def _api_token(hub, name) -> str:
    reply = _post(hub, name, "mlx/api/auth/tokens", json={"name": "sdk"}, headers=_hub_headers(hub, name))
    assert reply.status_code == 201, reply.text
    hub.ours.append(reply.json()["token"])
    return reply.json()["token"]


def _ticket(hub, server, headers) -> str:
    reply = _post(hub, server, "mlx/api/auth/ticket", headers=headers)
    assert reply.status_code == 201, reply.text
    hub.ours.append(reply.json()["token"])
    return reply.json()["token"]


def test_hub_names_and_roles_carry_over(hub):
    seen = {}
    for who in ("alice", "bob"):
        for server in ("alice", "bob"):
            reply = _get(hub, server, "mlx/api/auth/me", headers=_hub_headers(hub, who))
            assert reply.status_code == 200, (who, server, reply.text)
            seen[who, server] = reply.json()
            assert seen[who, server]["username"] == who and seen[who, server]["status"] == "approved"
            assert seen[who, server]["client"] == "kernel"  # a Hub API token, as kernels have
    assert seen["alice", "alice"]["is_admin"] is True  # owner and Hub admin
    assert seen["bob", "bob"]["is_admin"] is True  # a server's owner is admin there
    assert seen["alice", "bob"]["is_admin"] is True  # Hub admins are admins everywhere
    assert seen["bob", "alice"]["is_admin"] is False  # let in by the Hub: an approved user
    # bob's server knows both; alice may manage its users (an admin there), bob may not on hers.
    assert _get(hub, "bob", "mlx/api/users", headers=_hub_headers(hub, "alice")).status_code == 200
    refused = _get(hub, "alice", "mlx/api/users", headers=_hub_headers(hub, "bob"))
    assert refused.status_code == 403 and refused.json()["reason"] == "admin_required"
    # No credential: a 401 JSON error, not a redirect to the Hub's login page.
    none = _get(hub, "bob", "mlx/api/auth/me", allow_redirects=False)
    assert none.status_code == 401 and none.json()["reason"] == "unauthorized"


def test_api_token_with_the_openai_sdk_and_x_api_key_no_cookie(hub):
    token = _api_token(hub, "bob")
    client = openai.OpenAI(base_url=hub.user_url("bob") + "mlx/v1", api_key=token, max_retries=0, timeout=120)
    assert MODEL in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
    )
    assert reply.choices[0].finish_reason in ("length", "stop")
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
    )
    assert chunks and chunks[-1].choices[-1].finish_reason in ("length", "stop")

    # The anthropic SDK's header, on a POST (no XSRF: an explicit credential, like bearer).
    me = _get(hub, "bob", "mlx/api/auth/me", headers={"x-api-key": token})
    assert me.status_code == 200 and me.json()["username"] == "bob" and me.json()["client"] == "api_token"
    assert _post(hub, "bob", "mlx/api/auth/ticket", headers={"x-api-key": token}).status_code == 201
    # Our token is bob's on bob's server only: alice's server has its own secret and accounts.
    other = _get(hub, "alice", "mlx/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert other.status_code == 401 and other.json()["reason"] == "invalid_token"


def test_tickets_are_not_bearer_tokens(hub):
    ticket = _ticket(hub, "bob", _hub_headers(hub, "bob"))
    for headers in ({"Authorization": f"Bearer {ticket}"}, {"x-api-key": ticket}):
        reply = _post(hub, "bob", "mlx/api/auth/tokens", json={"name": "stolen"}, headers=headers)
        assert reply.status_code == 401 and reply.json()["reason"] == "ticket_not_bearer", reply.text


def _ws(hub, server, query, headers=()):
    url = hub.user_url(server).replace("http://", "ws://") + "mlx/api/audit/ws" + query
    return websocket.create_connection(url, header=list(headers), timeout=15)


def _close_code(ws) -> int | None:
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE, ("data before the close", opcode, data[:100])
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None


def test_ticket_opens_the_audit_websocket_and_sse_without_a_cookie(hub):
    api_token = _api_token(hub, "bob")  # also an audit record to replay
    ticket = _ticket(hub, "bob", _hub_headers(hub, "bob"))
    # As a browser sends it (JupyterHub then reads ?token= as a Hub token) and as a script does.
    for headers in (["Sec-Fetch-Mode: websocket"], []):
        ws = _ws(hub, "bob", f"?token={ticket}&replay=3", headers)
        try:
            message = json.loads(ws.recv())
            assert message["type"] == "record", message
        finally:
            ws.close()
    # Refused before the Hub sees anything: nothing, a JWT-shaped fake, an API token in a URL.
    for query in ("", "?token=not.a.jwt", f"?token={api_token}"):
        ws = _ws(hub, "bob", query, ["Sec-Fetch-Mode: websocket"])
        assert _close_code(ws) == 1008, query
        ws.close()
    # SSE and export URLs take tickets too.
    export = _get(hub, "bob", "mlx/api/audit/export", params={"format": "csv", "token": ticket})
    assert export.status_code == 200 and export.text.startswith("id,"), export.text[:200]
    progress = _get(hub, "bob", "mlx/api/downloads/999999/progress", params={"token": ticket})
    assert progress.status_code == 404, progress.text  # authenticated: only the download is unknown
    assert _get(hub, "bob", "mlx/api/downloads/999999/progress").status_code == 401


def test_browser_session_cookie_xsrf_and_websocket_ticket(hub):
    session = hub.login_session("alice")
    page = session.get(hub.user_url("alice") + "lab", timeout=60)  # OAuth into alice's server
    assert page.status_code == 200 and page.url.startswith(hub.user_url("alice")), page.url
    me = session.get(hub.user_url("alice") + "mlx/api/auth/me", timeout=30)
    assert me.status_code == 200 and me.json()["username"] == "alice" and me.json()["client"] == "browser"
    assert me.json()["is_admin"] is True

    # The Hub drops a cookie that fails XSRF silently; we still say 403, not "not signed in".
    refused = session.post(hub.user_url("alice") + "mlx/api/auth/ticket", timeout=30)
    assert refused.status_code == 403 and refused.json()["reason"] == "xsrf", refused.text
    xsrf = session.cookies.get("_xsrf", path="/user/alice/")
    assert xsrf
    ticket = session.post(hub.user_url("alice") + "mlx/api/auth/ticket", headers={"X-XSRFToken": xsrf}, timeout=30)
    assert ticket.status_code == 201, ticket.text
    hub.ours.append(ticket.json()["token"])
    created = session.post(
        hub.user_url("alice") + "mlx/api/auth/tokens", json={"name": "browser"}, headers={"X-XSRFToken": xsrf}
    )
    assert created.status_code == 201, created.text  # also an audit record to replay
    hub.ours.append(created.json()["token"])

    # The live Activity feed as JupyterLab opens it: cookie + ticket (cookie auth is off on
    # WebSockets here, so the ticket alone must carry it), and the cookie alone is refused.
    cookie = "Cookie: " + "; ".join(f"{c.name}={c.value}" for c in session.cookies if c.path.startswith("/user/"))
    ws = _ws(hub, "alice", f"?token={ticket.json()['token']}&replay=1", [cookie, "Sec-Fetch-Mode: websocket"])
    try:
        assert json.loads(ws.recv())["type"] == "record"
    finally:
        ws.close()
    ws = _ws(hub, "alice", "", [cookie, "Sec-Fetch-Mode: websocket"])
    assert _close_code(ws) == 1008
    ws.close()


KERNEL_CODE = """
import json, os, tempfile
from jupyter_mlx_manager import connect
from jupyter_mlx_manager.client.discovery import find_server
found = {}
client = connect()
found["default"] = [client.server.source, sorted(client.pool())]
os.environ.pop("JPY_PARENT_PID", None)
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp()  # no runtime files: the Hub's environment
client = connect()
found["hub"] = [client.server.source, client.server.url, sorted(client.pool())]
print("FOUND" + json.dumps(found))
"""


def test_kernel_client_finds_its_server_with_no_configuration(hub):
    from jupyter_client import BlockingKernelClient

    headers = _hub_headers(hub, "bob")
    kernel = _post(hub, "bob", "api/kernels", json={"name": "python3"}, headers=headers)
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    try:
        connection = hub.root / "home" / "bob" / ".local" / "share" / "jupyter" / "runtime" / f"kernel-{kernel_id}.json"
        wait_until(connection.exists, "the kernel's connection file", timeout=30, interval=0.2)
        client = BlockingKernelClient(connection_file=str(connection))
        client.load_connection_file()
        client.start_channels(hb=False)  # no heartbeat: it reads "dead" before its first beat
        try:
            client.wait_for_ready(timeout=60)
            output = []
            reply = client.execute_interactive(
                KERNEL_CODE,
                timeout=60,
                output_hook=lambda msg: output.append(msg["content"]["text"] if msg["msg_type"] == "stream" else ""),
            )
        finally:
            client.stop_channels()
        text = "".join(output)
        assert reply["content"]["status"] == "ok", (text, reply["content"])
        found = json.loads(text.split("FOUND", 1)[1])
        assert found["default"][0] == "JPY_PARENT_PID" and "models" in found["default"][1], found
        source, url, keys = found["hub"]
        assert source == "JupyterHub" and url.startswith("http://127.0.0.1:") and url.endswith("/user/bob/"), found
        assert "models" in keys
    finally:
        requests.delete(hub.user_url("bob") + f"api/kernels/{kernel_id}", headers=headers, timeout=30)


def test_our_tokens_never_reach_the_hub_or_a_log(hub):
    """Last (module order): our JWTs went to the single-user servers only, never to the
    Hub's API (which would answer `403 GET /hub/api/user`), and no log line shows one."""
    assert len(hub.ours) >= 4
    log = hub.log_text()
    assert "GET /hub/api/user" in log  # the Hub's own credentials are checked there
    for line in log.splitlines():
        if "/hub/api/user " in line or "/hub/api/user?" in line:
            assert " 200 GET " in line, line
    for token in hub.ours:
        assert token not in log and token.rsplit(".", 1)[1] not in log  # not even its signature
    for path in Path(hub.root).rglob("*.log"):
        text = path.read_text(errors="replace")
        assert not any(token in text for token in hub.ours), path
