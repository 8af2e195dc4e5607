"""The audit trail under real traffic: counts, live delivery, queries, exports, retention."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import sqlite3
import time

import pytest
import requests
from conftest import OWNER, server_config
from models import build_models, eos_id
from servers import jupyter_server
from waiting import wait_until_async

MODEL = "local/tiny-demo"


@pytest.fixture(scope="session")
def audit_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("audit-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(audit_models):
    return server_config(audit_models, default_keep_alive=-1)


def _chat(audit_models, tokens=3):
    return {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "temperature": 0,
        "logit_bias": {str(eos_id(audit_models / "tiny-demo")): -100},
    }  # fmt: skip


async def _chat_records(api, **params):
    reply = await api("GET", "mlx/api/audit", params={"limit": "1000", **params})
    return [r for r in reply.body["records"] if r["action"] == "chat.completions"]


async def test_fifty_concurrent_requests_make_fifty_exact_records(api, make_user, audit_models):
    _, alice = await make_user("alice")
    bob_token = (await api("POST", "mlx/api/auth/tokens", auth=(await make_user("bob"))[1], body={"name": "b"})).body[
        "token"
    ]
    callers = [("alice", alice), ("bob", bob_token), (OWNER, "jupyter")]
    replies = await asyncio.gather(
        *(api("POST", "mlx/v1/chat/completions", auth=callers[i % 3][1], body=_chat(audit_models)) for i in range(50))
    )
    assert all(r.code == 200 for r in replies), [r.body for r in replies if r.code != 200][:2]

    records = await _chat_records(api)
    assert len(records) == 50
    by_id = {r["request_id"]: r for r in records}
    for i, reply in enumerate(replies):
        record = by_id[reply.headers["X-Request-ID"]]
        assert record["user"] == callers[i % 3][0]
        assert record["client"] == {"alice": "session", "bob": "api_token", OWNER: "kernel"}[callers[i % 3][0]]
        assert (
            record["status"] == "ok"
            and record["model"] == MODEL
            and record["endpoint"].endswith("/mlx/v1/chat/completions")
        )
        assert record["completion_tokens"] == reply.body["usage"]["completion_tokens"] == 3
        assert record["prompt_tokens"] == reply.body["usage"]["prompt_tokens"] > 0
        assert record["ttft_ms"] > 0 and record["duration_ms"] >= record["ttft_ms"]

    stats = (await api("GET", "mlx/api/audit/stats")).body
    assert stats["by_model"][MODEL] >= 50 and stats["tokens"]["completion"] == 150
    assert stats["ttft_ms"]["p50"] <= stats["ttft_ms"]["p95"]
    # A user sees only their own records and stats.
    own = (await api("GET", "mlx/api/audit", auth=alice, params={"limit": "1000"})).body
    assert {r["user"] for r in own["records"]} == {"alice"} and own["total"] == len(own["records"])
    assert (await api("GET", "mlx/api/audit", auth=alice, params={"user": "bob"})).code == 403
    assert set((await api("GET", "mlx/api/audit/stats", auth=alice)).body["by_user"]) == {"alice"}


async def test_a_new_request_arrives_live_on_the_websocket(api, jp_ws_fetch, audit_models):
    ws = await jp_ws_fetch("mlx", "api", "audit", "ws")
    reply = await api("POST", "mlx/v1/chat/completions", body=_chat(audit_models))
    while True:
        message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
        if message["type"] == "record" and message["data"]["action"] == "chat.completions":
            break
    assert message["data"]["request_id"] == reply.headers["X-Request-ID"]
    assert message["data"]["completion_tokens"] == 3
    ws.close()


async def test_filters_pagination_and_exports_match_what_was_recorded(api, make_user, mlx_app):
    for i in range(7):
        await mlx_app.audit.record(
            "test.event", user="carol" if i % 2 else "dave", model=f"m/{i % 3}", status="error" if i == 3 else "ok"
        )
    everything = (await api("GET", "mlx/api/audit", params={"limit": "1000"})).body
    assert everything["total"] == len(everything["records"])

    pages = []
    for offset in range(0, everything["total"], 3):
        pages += (await api("GET", "mlx/api/audit", params={"limit": "3", "offset": str(offset)})).body["records"]
    assert pages == everything["records"]

    carol = (await api("GET", "mlx/api/audit", params={"user": "carol"})).body
    assert carol["total"] == 3 and {r["user"] for r in carol["records"]} == {"carol"}
    assert (await api("GET", "mlx/api/audit", params={"model": "m/0"})).body["total"] == 3
    assert [r["user"] for r in (await api("GET", "mlx/api/audit", params={"status": "error"})).body["records"]] == [
        "carol"
    ]
    middle = everything["records"][3]["time"]
    since = (await api("GET", "mlx/api/audit", params={"since": middle})).body["records"]
    assert all(r["time"] >= middle for r in since) and since
    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"status": "weird"}, {"since": "yesterday"}):
        assert (await api("GET", "mlx/api/audit", params=bad)).code == 400, bad

    jsonl = await api("GET", "mlx/api/audit/export", params={"format": "jsonl"})
    exported = [json.loads(line) for line in jsonl.body.splitlines()] if isinstance(jsonl.body, str) else [jsonl.body]
    assert exported == list(reversed(everything["records"]))
    ticket = (await api("POST", "mlx/api/auth/ticket")).body["token"]
    as_csv = await api("GET", "mlx/api/audit/export", auth=None, params={"format": "csv", "token": ticket})
    assert as_csv.code == 200 and as_csv.headers["Content-Disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(as_csv.body)))
    assert [int(r["id"]) for r in rows] == [r["id"] for r in exported]
    assert [r["action"] for r in rows] == [r["action"] for r in exported]
    assert (await api("GET", "mlx/api/audit/export", params={"format": "xml"})).code == 400


async def test_a_subscriber_that_never_reads_stays_bounded_and_gets_a_gap(
    api, jp_http_port, jp_base_url, jp_serverapp, mlx_app
):
    # A raw WebSocket client with a tiny receive buffer that does not read (non-blocking:
    # the server runs on this same event loop).
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", jp_http_port))
    await loop.sock_sendall(
        sock,
        (f"GET {jp_base_url}mlx/api/audit/ws HTTP/1.1\r\nHost: localhost:{jp_http_port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         f"Authorization: token {jp_serverapp.identity_provider.token}\r\n\r\n").encode()
    )  # fmt: skip
    assert b"101" in (await asyncio.wait_for(loop.sock_recv(sock, 1024), 10)).split(b"\r\n")[0]
    # Text fields are bounded (~800 bytes a record at most): 12,000 of them are more than the
    # kernel's socket buffers can absorb.
    long = {"endpoint": "/flood/" + "x" * 400, "model": "m" * 400, "error_type": "e" * 200, "client": "c" * 40}
    for i in range(12000):
        await mlx_app.audit.record("flood.event", user=OWNER, **long)
    (subscription,) = [s for s in mlx_app.audit._subscribers]
    await wait_until_async(
        lambda: subscription._pending_gap > 0 or any(m.get("type") == "gap" for m in subscription._items),
        "the subscription to note a gap",
    )
    assert len(subscription._items) <= subscription.maxsize + 1

    # Once it reads, the gap marker tells it how much it missed.
    tail, found = b"", False
    deadline = time.monotonic() + 60  # megabytes of queued records come first on a slow machine
    while not found and time.monotonic() < deadline:
        tail = tail[-64:] + await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        found = b'"type": "gap", "dropped":' in tail
    sock.close()
    assert found, "no gap marker in what the socket received"


async def test_retention_prunes_old_records(mlx_app):
    await mlx_app.db.write(
        lambda conn: conn.execute(
            "INSERT INTO audit_log (time, action, status) VALUES ('2000-01-01T00:00:00.000Z', 'old', 'ok')"
        )
    )
    assert await mlx_app.audit.prune(30) == 1
    assert await mlx_app.audit.prune(0) == 0
    records, _ = await mlx_app.audit.query(limit=1000)
    assert "old" not in [r["action"] for r in records]


async def test_records_are_jupyter_events(api, jp_serverapp):
    from jupyter_mlx_manager.audit.log import EVENT_SCHEMA_ID

    seen = []

    async def listener(logger, schema_id, data):
        seen.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=EVENT_SCHEMA_ID, listener=listener)
    await api("POST", "mlx/api/auth/tokens", body={"name": "event"})
    await wait_until_async(
        lambda: any(d["action"] == "token.create" and d["user"] == OWNER for d in seen),
        "a token.create event from the owner",
    )


def test_with_audit_record_content_the_prompt_and_reply_are_kept(tmp_path, audit_models):
    """`audit_record_content`: each record keeps the prompt as the model got it (chat messages, or a
    completion's prompt) and the reply's text; without it, nothing of either is stored."""
    no_eos = {str(eos_id(audit_models / "tiny-demo")): -100}
    chat = {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "max_tokens": 4, "temperature": 0, "logit_bias": no_eos}  # fmt: skip
    completion = {"model": MODEL, "prompt": "Once upon", "max_tokens": 4, "temperature": 0, "logit_bias": no_eos}
    for recorded in (True, False):
        root = tmp_path / str(recorded)
        root.mkdir()
        args = (f"--MLXManager.model_dirs={audit_models}", f"--MLXManager.audit_record_content={recorded}")
        with jupyter_server(root, *args) as server:
            replies = {}
            for path, body in (("chat/completions", chat), ("completions", completion)):
                reply = requests.post(server.url + "mlx/v1/" + path, json=body, headers=server.headers, timeout=120)
                assert reply.status_code == 200, reply.text
                replies[reply.headers["X-Request-ID"]] = reply.json()["choices"][0]
        with sqlite3.connect(server.data_dir / "mlx_manager.sqlite3") as db:
            stored = dict(db.execute("SELECT request_id, detail FROM audit_log WHERE request_id IS NOT NULL"))
        for request_id, choice in replies.items():
            if not recorded:
                assert stored[request_id] is None
                continue
            content = json.loads(stored[request_id])
            if "message" in choice:
                assert content["prompt"] == chat["messages"] and content["completion"] == choice["message"]["content"]
            else:
                assert content["prompt"] == completion["prompt"] and content["completion"] == choice["text"]
