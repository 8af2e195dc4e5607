"""Hostile input at scale, the transport half (SPEC "Hostile input at scale"): bodies refused
from their headers before they are read, in each route's envelope; JSON bombs answered 400;
image bytes in flight bounded per user; slow and numerous connections dropped by `serve`; the
audit's client taken from the credential. Through a real `jupyter mlx-manager serve` process
(its memory read from /proc) and a real Jupyter server, with raw sockets where a well-behaved
client would hide what the server does."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import OWNER, server_config
from servers import free_port, jupyter_server, wait_for_start
from waiting import wait_until, wait_until_async

PASSWORD = "correct horse battery staple"
MB = 1024 * 1024


# -- raw HTTP ---------------------------------------------------------------------------------


def _head(method: str, path: str, length: int | None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) of a complete response in `data`, or None while incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", 0))
    if len(rest) < length:
        return None
    return int(status_line.split()[1]), headers, rest[:length]


def headers_only(port: int, method: str, path: str, length: int, headers=None, timeout=20.0):
    """Send a request's headers and none of its body: the server's answer, or None when it
    waited for the body instead (until `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_head(method, path, length, headers))
        data = b""
        deadline = time.monotonic() + timeout
        while (reply := _parse(data)) is None and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            data += chunk
        return reply


def _json(reply) -> dict:
    assert reply is not None, "the server waited for the body"
    assert reply[1]["content-type"].startswith("application/json"), reply
    return json.loads(reply[2])


def push_body(port: int, path: str, size: int, headers=None) -> None:
    """Send a whole `size`-byte body (from one reused buffer) as fast as the server takes it;
    the server may answer and close first."""
    piece = b" " * MB
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(_head("POST", path, size, headers))
            sent = 0
            while sent < size:
                sock.sendall(piece[: min(MB, size - sent)])
                sent += min(MB, size - sent)
            sock.recv(4096)
    except OSError:
        pass  # refused before the end: what a bounded server does


# -- /proc ------------------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """From here on VmHWM is the peak of the RSS (Linux: 5 > clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


# -- serve ------------------------------------------------------------------------------------

CONNECTIONS_PER_IP = 24


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """`jupyter mlx-manager serve` with its defaults but a small per-address connection bound;
    `serve.token`: an API token of its admin."""
    root = tmp_path_factory.mktemp("hostile-serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_MLX_MANAGER", "JPY_", "JUPYTERHUB_"))}
    env.update(JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed at the end of the module
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "serve", "--ip", "127.0.0.1", "--port", str(port),
         f"--MLXManager.data_dir={root / 'data'}", "--MLXManager.warm_runner=False",
         f"--MLXManager.max_connections_per_ip={CONNECTIONS_PER_IP}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    wait_for_start(process, url, root / "serve.log")
    user = {"username": "ann", "password": PASSWORD}
    assert requests.post(url + "mlx/api/auth/register", json=user, timeout=30).status_code == 201
    access = requests.post(url + "mlx/api/auth/login", json=user, timeout=30).json()["access_token"]
    process.url, process.port, process.root = url, port, root
    process.token = access
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def _bearer(serve) -> dict[str, str]:
    return {"Authorization": f"Bearer {serve.token}"}


def test_oversized_bodies_are_refused_from_their_headers_in_each_routes_envelope(serve):
    bearer = _bearer(serve)
    # No body is sent at all: an answer proves the decision was taken on the headers.
    chat = _json(headers_only(serve.port, "POST", "/mlx/v1/chat/completions", 1024 * MB, bearer))
    assert chat["error"]["code"] == "payload_too_large" and chat["error"]["type"] == "invalid_request_error", chat
    messages = _json(headers_only(serve.port, "POST", "/mlx/v1/messages", 1024 * MB, bearer))
    assert messages["type"] == "error" and messages["error"]["type"] == "request_too_large", messages
    load = headers_only(serve.port, "POST", "/mlx/api/pool/load", 1 * MB, bearer)
    assert load[0] == 413 and _json(load)["reason"] == "payload_too_large", load
    # The routes that need no credential read no more than 64 KiB.
    login = headers_only(serve.port, "POST", "/mlx/api/auth/login", 65 * 1024)
    assert login[0] == 413 and _json(login)["reason"] == "payload_too_large", login
    # Not a number: a 400, not a 500.
    bad = headers_only(serve.port, "POST", "/mlx/api/pool/load", 0, {"Content-Length": "12x"})
    assert bad is not None and bad[0] == 400, bad


def test_requests_without_a_credential_are_refused_before_their_body_is_read(serve):
    for path, length in (("/mlx/v1/chat/completions", 3 * MB), ("/mlx/api/status", 60 * 1024)):
        reply = headers_only(serve.port, "POST", path, length)
        assert reply is not None and reply[0] == 401, (path, reply)
        body = _json(reply)
        assert (body["error"]["type"] == "authentication_error") if "v1" in path else body["reason"] == "unauthorized"


def test_parallel_unauthenticated_big_bodies_leave_the_servers_memory_flat(serve):
    """The issue's attack, scaled for a small machine: 8 parallel 48 MB POSTs with no credential.
    Buffered before authentication they would cost the server 384 MB or more."""
    before = rss_mb(serve.pid)
    reset_peak_rss(serve.pid)
    attackers = [
        threading.Thread(target=push_body, args=(serve.port, path, 48 * MB))
        for path in ["/mlx/api/status", "/mlx/v1/chat/completions"] * 4
    ]
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join(120)
    grown = peak_rss_mb(serve.pid) - before
    assert grown < 64, f"peak RSS grew by {grown:.0f} MB"
    status = requests.get(serve.url + "mlx/api/status", headers=_bearer(serve), timeout=30)
    assert status.status_code == 200, status.text


def test_a_chunked_body_beyond_the_limit_is_413(serve):
    """Without a Content-Length the limit is counted as the body arrives."""
    with socket.create_connection(("127.0.0.1", serve.port), timeout=20) as sock:
        sock.sendall(_head("POST", "/mlx/api/auth/login", None, {"Transfer-Encoding": "chunked"}))
        data = b""
        try:
            for _ in range(8):
                sock.sendall(b"%x\r\n%s\r\n" % (16 * 1024, b" " * 16 * 1024))
        except OSError:  # the server answered and closed while chunks were still coming: read its answer
            pass
        try:
            while (reply := _parse(data)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:  # its close reset the connection after the answer arrived
            reply = _parse(data)
    assert reply is not None and reply[0] == 413, data[:300]
    assert json.loads(reply[2])["reason"] == "payload_too_large"


def test_a_client_that_sends_its_headers_slowly_is_dropped(serve):
    """Slowloris: one byte of headers a second never completes a request; the connection is
    closed within SPEC's 30 s (and the client here gives up waiting after 45 s)."""
    with socket.create_connection(("127.0.0.1", serve.port), timeout=2) as sock:
        sock.sendall(b"GET /mlx/api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started, closed = time.monotonic(), False
        while not closed and time.monotonic() - started < 45:
            try:
                sock.sendall(b"a")
                closed = sock.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
    assert closed, "the slow client was never dropped"
    assert time.monotonic() - started <= 31


def test_connections_per_client_address_are_bounded(serve):
    held = [socket.create_connection(("127.0.0.1", serve.port), timeout=5) for _ in range(CONNECTIONS_PER_IP)]
    try:
        extra = [socket.create_connection(("127.0.0.1", serve.port), timeout=5) for _ in range(4)]
        for sock in extra:  # closed at once by the server, before any request
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
            sock.close()
        held[0].settimeout(0.5)
        with pytest.raises(TimeoutError):  # the ones within the bound stay open
            held[0].recv(1)
    finally:
        for sock in held:
            sock.close()

    def status() -> requests.Response | None:
        try:
            return requests.get(serve.url + "mlx/api/status", headers=_bearer(serve), timeout=30)
        except requests.ConnectionError:
            return None

    # Closed connections free their places (once the server has seen them close).
    reply = wait_until(status, "the closed connections to free their places", timeout=20, interval=0.2)
    assert reply.status_code == 200, reply.text


# -- a real Jupyter server ----------------------------------------------------------------------

IMAGE_ALLOWANCE_MB = 1


@pytest.fixture
def mlx_config():
    return server_config(max_image_mb_in_flight=IMAGE_ALLOWANCE_MB)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [20_000, 65])
async def test_json_nested_too_deep_is_400_invalid_json_on_every_route(api, make_user, depth):
    _, token = await make_user("deep")
    bomb = _nested(depth)
    for path, auth in (
        ("mlx/api/auth/login", None),
        ("mlx/api/auth/register", None),
        ("mlx/api/pool/load", "jupyter"),
        ("mlx/api/auth/tokens", token),
        ("mlx/v1/chat/completions", token),
        ("mlx/v1/messages", token),
        ("mlx/v1/responses", token),
        ("mlx/v1/embeddings", token),
    ):
        reply = await api("POST", path, auth=auth, raw_body=f'{{"model": "x", "messages": {bomb}}}',
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert reply.code == 400, (path, reply.code, reply.body)
        if path.endswith("messages"):
            assert reply.body["error"]["type"] == "invalid_request_error", reply.body
        elif "v1" in path:
            assert reply.body["error"]["code"] == "invalid_json", reply.body
        else:
            assert reply.body["reason"] == "invalid_json", reply.body


async def test_json_within_the_nesting_bound_and_other_bad_json(api):
    ok = await api("POST", "mlx/api/pool/load", raw_body=f'{{"model": "x", "extra": {_nested(62)}}}',
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert ok.code != 400 or ok.body["reason"] != "invalid_json", ok.body  # parsed: refused for its model
    for raw in ('{"model": NaN}', '{"model": Infinity}', "{", '"a string"', "[]", "\xff"):
        reply = await api("POST", "mlx/api/pool/load", raw_body=raw, headers={"Content-Type": "application/json"})
        assert reply.code == 400 and reply.body["reason"] == "invalid_json", (raw, reply.body)


async def test_a_malformed_form_is_400(api):
    reply = await api("POST", "mlx/v1/audio/transcriptions", raw_body="garbage",
                      headers={"Content-Type": "multipart/form-data; boundary=xx"})  # fmt: skip
    assert reply.code == 400 and reply.body["error"]["type"] == "invalid_request_error", reply.body  # not a 500


async def _open_chat_upload(port: int, base_url: str, token: str, length: int):
    """A chat request whose headers and first bytes are sent, the rest held back: in flight."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head("POST", f"{base_url}mlx/v1/chat/completions", length, {"Authorization": f"Bearer {token}"}))
    writer.write(b'{"model": "x", "messages": [')
    await writer.drain()
    return reader, writer


async def test_image_bytes_in_flight_are_bounded_per_user(
    api, make_user, mlx_app, jp_serverapp, jp_http_port, jp_base_url
):
    ann, ann_token = await make_user("ann")
    _, bob_token = await make_user("bob")
    images = lambda: jp_serverapp.web_app.settings["mlx_images_in_flight"]  # noqa: E731
    body = {"model": "none", "messages": [{"role": "user", "content": "x" * (600 * 1024)}]}

    # ann has 700 KB of a chat body in flight: 600 KB more would pass her 1 MB allowance.
    _, writer = await _open_chat_upload(jp_http_port, jp_base_url, ann_token, 700 * 1024)
    await wait_until_async(
        lambda: "mlx_images_in_flight" in jp_serverapp.web_app.settings and images().held(ann["id"]),
        "ann's upload to be in flight",
    )
    refused = await api("POST", "mlx/v1/chat/completions", auth=ann_token, body=body)
    assert refused.code == 429 and refused.body["error"]["code"] == "images_in_flight", refused.body
    assert int(refused.headers["Retry-After"]) >= 1
    refused = await api("POST", "mlx/v1/messages", auth=ann_token, body={**body, "max_tokens": 1})
    assert refused.code == 429 and refused.body["error"]["type"] == "rate_limit_error", refused.body
    # Another user has an allowance of their own.
    other = await api("POST", "mlx/v1/chat/completions", auth=bob_token, body=body)
    assert other.code != 429, other.body

    # A client that leaves mid-body gives its bytes back.
    writer.close()
    await wait_until_async(lambda: images().held(ann["id"]) == 0, "ann's bytes to be released")
    again = await api("POST", "mlx/v1/chat/completions", auth=ann_token, body=body)
    assert again.code != 429, again.body
    assert images().held(ann["id"]) == 0  # and a finished request too

    # More than the whole allowance can never be admitted: 413, not a retry.
    too_big = await asyncio.to_thread(
        headers_only, jp_http_port, "POST", f"{jp_base_url}mlx/v1/chat/completions", 2 * MB,
        {"Authorization": f"Bearer {ann_token}"},
    )  # fmt: skip
    assert too_big is not None and too_big[0] == 413, too_big

    # Without a Content-Length (chunked), the bytes are counted as they arrive.
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    writer.write(_head("POST", f"{jp_base_url}mlx/v1/chat/completions", None,
                       {"Authorization": f"Bearer {ann_token}", "Transfer-Encoding": "chunked"}))  # fmt: skip
    data = b""
    try:
        for _ in range(2 * IMAGE_ALLOWANCE_MB * 16):  # twice the allowance, in 64 KiB chunks
            writer.write(b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024))
            await writer.drain()
    except ConnectionError:
        pass
    while (reply := _parse(data)) is None and (chunk := await reader.read(65536)):
        data += chunk
    writer.close()
    assert reply is not None and reply[0] == 413, data[:300]  # the request alone outgrew the allowance
    await wait_until_async(lambda: images().held(ann["id"]) == 0, "the chunked request's bytes to be released")


def test_the_audit_client_follows_the_credential_not_the_headers(tmp_path):
    """A kernel (the Jupyter token) that adds an X-XSRFToken header of its choosing is still a
    kernel; a browser is the request with the login cookie, with or without the token."""
    with jupyter_server(tmp_path) as server:
        token_only = {**server.headers, "X-XSRFToken": "anything"}
        me = requests.get(server.url + "mlx/api/auth/me", headers=token_only, timeout=30)
        assert me.status_code == 200 and me.json()["client"] == "kernel", me.text
        created = requests.post(
            server.url + "mlx/api/auth/tokens", json={"name": "spoof"}, headers=token_only, timeout=30
        )
        assert created.status_code == 201, created.text

        browser = requests.Session()  # signs in on Jupyter's login page, as a person does
        browser.get(server.url + "login", timeout=30)
        xsrf = browser.cookies["_xsrf"]
        login = browser.post(server.url + "login", data={"password": server.token, "_xsrf": xsrf}, timeout=30)
        assert login.status_code == 200 and any(c.startswith("username-") for c in browser.cookies.keys()), login.url
        for headers in ({"X-XSRFToken": xsrf}, {"X-XSRFToken": xsrf, **server.headers}):  # JupyterLab may send both
            me = browser.get(server.url + "mlx/api/auth/me", headers=headers, timeout=30)
            assert me.status_code == 200 and me.json()["client"] == "browser", (headers, me.text)

        records = requests.get(server.url + "mlx/api/audit", params={"action": "token.create"}, headers=server.headers,
                               timeout=30).json()["records"]  # fmt: skip
        assert [r["client"] for r in records if r["action"] == "token.create"] == ["kernel"], records


async def test_probing_account_names_through_registration_is_bounded_per_address(api, mlx_app):
    """Registration still says "already exists" (a person picking a name must learn it at once,
    and a real registration's reply carries the account's id), but every attempt, taken name or
    free, counts against the address's registration allowance: a prober learns a handful of
    names per window."""
    limit = mlx_app.users.registrations.limit
    for _ in range(limit):
        taken = await api("POST", "mlx/api/auth/register", auth=None, body={"username": OWNER, "password": PASSWORD})
        assert taken.code == 409 and taken.body["reason"] == "user_exists", taken.body
    for name in (OWNER, "free-name"):
        refused = await api("POST", "mlx/api/auth/register", auth=None, body={"username": name, "password": PASSWORD})
        assert refused.code == 429 and refused.body["reason"] == "registration_throttled", refused.body
        assert int(refused.headers["Retry-After"]) > 0
