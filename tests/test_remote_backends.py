"""Remote backends through a real server process: a real `mlx_lm.server` on a tiny demo model as
the upstream, and a small recording upstream (it shows the headers it got and when a client
left, which mlx_lm.server does not), reached with the unmodified openai and anthropic SDKs.

One server process serves the whole module (its log is read at the end for the key)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import openai
import pytest
import requests
from models import build_models, eos_id
from servers import free_port, jupyter_server
from waiting import wait_until

from jupyter_mlx_manager.audit import AuditLog
from jupyter_mlx_manager.backends import parse_backends
from jupyter_mlx_manager.storage import Database
from jupyter_mlx_manager.storage.migrations import MIGRATIONS

KEY_ENV = "REMOTE_BACKEND_TEST_KEY"
SECRET = "sk-upstream-" + os.urandom(12).hex()
ECHO = "remote/rec/echo"


# -- the upstreams -----------------------------------------------------------------------------
class MlxUpstream:
    """`mlx_lm.server` on one port, stopped and started again by the tests."""

    def __init__(self, model: Path, root: Path):
        self.model, self.root, self.port = model, root, free_port()
        self.process: subprocess.Popen | None = None
        (root / "hf").mkdir(exist_ok=True)  # its GET /v1/models scans an HF cache, which must exist

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_CACHE": str(self.root / "hf"), "HF_HUB_OFFLINE": "1"}
        with open(self.root / "upstream.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlx_lm.server", "--model", str(self.model), "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

        def lists_its_model() -> bool:
            try:
                return bool(requests.get(self.url + "/models", timeout=2).json()["data"])
            except (requests.ConnectionError, ValueError):
                return False

        try:
            wait_until(lists_its_model, "mlx_lm.server to list its model", timeout=60, interval=0.2)
        except AssertionError as error:
            log = (self.root / "upstream.log").read_text()[-2000:]
            raise RuntimeError("mlx_lm.server did not start:\n" + log) from error

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Recorder(ThreadingHTTPServer):
    """An OpenAI-style upstream that records every request. The last user message picks the
    reply: "gate" (one chunk, then the rest once the test saw it), "long" (a chunk every 20 ms
    until the client leaves), "leak" (a 400 quoting the Authorization header), "tool" (a tool
    call in two pieces), else "a b c"."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RecorderHandler)
        self.requests: list[dict] = []
        self.seen_first = threading.Event()  # set by the test once chunk 1 reached it through us
        self.released_by_client = False
        self.left = threading.Event()  # a "long" stream's client went away
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class RecorderHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self.server.requests.append({"path": self.path, "headers": dict(self.headers)})
        self._json(200, {"object": "list", "data": [{"id": "echo", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path.endswith("/embeddings"):  # one vector [i, len(text)] per input
            data = [{"object": "embedding", "index": i, "embedding": [float(i), float(len(text))]}
                    for i, text in enumerate(body["input"])]  # fmt: skip
            usage = {"prompt_tokens": 7, "total_tokens": 7}
            return self._json(200, {"object": "list", "data": data, "model": body["model"], "usage": usage})
        mode = body["messages"][-1]["content"]
        if mode == "leak":
            return self._json(400, {"error": {"message": f"bad key {self.headers['Authorization']}", "param": None}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            if mode == "tool":
                call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather"}}
                self._chunk({"tool_calls": [{**call, "function": {**call["function"], "arguments": '{"city": '}}]})
                self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, "tool_calls")
                return self.wfile.write(b"data: [DONE]\n\n")
            self._chunk({"content": "a "})
            if mode == "gate":
                self.server.released_by_client = self.server.seen_first.wait(10)
            elif mode == "long":
                for _ in range(1000):
                    time.sleep(0.02)
                    self._chunk({"content": "x "})
            self._chunk({"content": "b "})
            self._chunk({"content": "c"}, "stop")
            usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            self.server.left.set()

    def _chunk(self, delta: dict, finish: str | None = None) -> None:
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("remote")


@pytest.fixture(scope="module")
def upstream(root):
    model = build_models(root, ["tiny-demo"]) / "tiny-demo"
    running = MlxUpstream(model, root)
    running.start()
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture(scope="module")
def recorder():
    server = Recorder()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def server(root, upstream, recorder):
    (root / "server" / "config").mkdir(parents=True)
    backends = {
        "mlx": {"url": upstream.url, "api_key_env": KEY_ENV},
        "rec": {"url": recorder.url, "api_key_env": KEY_ENV, "models": ["echo"]},
        "gone": {"url": f"http://127.0.0.1:{free_port()}/v1"},  # nobody there: discovery fails
    }
    config = {"MLXManager": {"remote_backends": backends, "max_requests_per_user": 2}}
    (root / "server" / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    with jupyter_server(root / "server", "--ServerApp.log_level=DEBUG", env={KEY_ENV: SECRET}) as running:
        yield running


@pytest.fixture(scope="module")
def token(server) -> str:
    reply = requests.post(server.url + "mlx/api/auth/tokens", headers=server.headers, json={"name": "sdk"})
    return reply.json()["token"]


@pytest.fixture(scope="module")
def sdk(server, token) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "mlx/v1", api_key=token, max_retries=0)


@pytest.fixture(scope="module")
def mlx_model(upstream) -> str:
    return f"remote/mlx/{upstream.model.resolve()}"


@pytest.fixture(scope="module")
def no_eos(upstream) -> dict:
    return {"logit_bias": {str(eos_id(upstream.model)): -100}}


def _audit(server, request_id: str) -> dict:
    """The audit record of one request, once written (a cancelled one is written as the
    server notices the client left)."""

    def record() -> dict | None:
        records = requests.get(server.url + "mlx/api/audit", headers=server.headers, params={"limit": 50}).json()
        found = [r for r in records["records"] if r["request_id"] == request_id]
        return found[0] if found else None

    return wait_until(record, f"the audit record of request {request_id}", timeout=10)


def _pool(server) -> dict[str, dict]:
    models = requests.get(server.url + "mlx/api/pool", headers=server.headers).json()["models"]
    return {m["model"]: m for m in models}


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "entry, message",
    [
        ({"url": "ftp://x"}, "url must be an http(s) URL"),
        ({"url": "http://u:p@host/v1"}, "must not hold a user or password"),
        ({"url": "http://host/v1", "api_key_env": "NOT_SET_ANYWHERE"}, "not a set environment variable"),
        ({"url": "http://host/v1", "models": ["a b"]}, "models must be a list"),
        ({"url": "http://host/v1", "token": "x"}, "must be a dict with keys"),
    ],
)
def test_a_bad_backend_entry_is_named(entry, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_backends({"up": entry}, {})
    with pytest.raises(ValueError, match="backend name"):
        parse_backends({"bad name": {"url": "http://host/v1"}}, {})


def test_an_existing_audit_log_gains_the_backend_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # a database as the previous release left it
        for script in MIGRATIONS[:4]:
            conn.executescript(script)
        conn.execute("INSERT INTO audit_log (time, action, status) VALUES ('2026-01-01T00:00:00Z', 'chat', 'ok')")
        conn.execute("PRAGMA user_version = 4")
    db = Database(path)
    db.open()
    try:
        audit = AuditLog(db)
        asyncio.run(audit.record("chat.completions", backend="mlx"))
        records, _ = asyncio.run(audit.query())
        assert [r["backend"] for r in records] == ["mlx", None]
    finally:
        db.close()


def test_remote_models_are_listed_with_health(server, sdk, mlx_model):
    ids = {m.id for m in sdk.models.list()}
    assert {mlx_model, ECHO} <= ids  # discovered from mlx_lm.server, and configured
    pool = _pool(server)
    assert (pool[mlx_model]["backend"], pool[mlx_model]["health"]) == ("mlx", "up")
    assert pool[ECHO]["backend"] == "rec"
    assert not any(i.startswith("remote/gone/") for i in ids)
    assert "remote backend gone is down (discovery" in server.log.read_text()
    for action in ("load", "unload"):
        reply = requests.post(server.url + f"mlx/api/pool/{action}", headers=server.headers, json={"model": ECHO})
        assert reply.status_code == 200 and reply.json()["status"] == "remote", reply.text
        assert f"nothing to {action}" in reply.json()["message"]


def test_a_stream_is_passed_through_as_it_arrives(server, sdk, recorder):
    stream = sdk.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "gate"}], stream=True)
    texts = []
    for chunk in stream:
        assert chunk.model == ECHO
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
            recorder.seen_first.set()  # the upstream holds the rest until chunk 1 got here
    assert texts == ["a ", "b ", "c"]
    assert recorder.released_by_client  # not by its 10 s timeout: nothing was buffered
    sent = recorder.requests[-1]
    assert sent["body"]["stream"] is True and sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["body"]["model"] == "echo"
    assert sent["headers"]["X-Request-ID"] == stream.response.headers["X-Request-ID"]


def test_embeddings_of_a_remote_model(server, sdk, recorder):
    reply = sdk.embeddings.create(model=ECHO, input=["one", "three"], encoding_format="float")
    assert reply.model == ECHO and [d.embedding for d in reply.data] == [[0.0, 3.0], [1.0, 5.0]]
    sent = recorder.requests[-1]
    assert sent["path"] == "/v1/embeddings" and sent["body"]["model"] == "echo"
    assert sent["body"]["input"] == ["one", "three"] and sent["headers"]["Authorization"] == f"Bearer {SECRET}"
    record = _audit(server, sent["headers"]["X-Request-ID"])
    assert (record["backend"], record["status"], record["prompt_tokens"]) == ("rec", "ok", 7)


def test_echo_is_refused_for_a_remote_model_not_dropped(server, sdk, recorder):
    """lm-eval scores with `echo`: without the prompt's logprobs its scores would be silently wrong."""
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=ECHO, prompt="one two", max_tokens=0, echo=True, logprobs=1)
    assert refused.value.body["param"] == "echo" and refused.value.code == "not_supported_for_remote"


def test_mlx_lm_server_streams_and_answers_with_usage_in_the_audit(server, sdk, mlx_model, no_eos):
    stream = sdk.chat.completions.create(
        model=mlx_model, messages=[{"role": "user", "content": "hi"}], max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body=no_eos,
    )  # fmt: skip
    chunks = list(stream)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].model == mlx_model
    raw = sdk.chat.completions.with_raw_response.create(
        model=mlx_model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, extra_body=no_eos
    )
    reply = raw.parse()
    assert reply.model == mlx_model and reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8 and reply.usage.prompt_tokens > 0
    record = _audit(server, raw.headers["X-Request-ID"])
    assert (record["backend"], record["status"], record["model"]) == ("mlx", "ok", mlx_model)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (reply.usage.prompt_tokens, 8)
    assert record["ttft_ms"] is not None
    text = sdk.completions.create(model=mlx_model, prompt="Once", max_tokens=4, extra_body=no_eos)
    assert text.usage.completion_tokens == 4 and text.model == mlx_model


def test_anthropic_messages_on_a_remote_model(server, token, mlx_model, no_eos):
    claude = anthropic.Anthropic(base_url=server.url + "mlx", api_key=token, max_retries=0)
    message = claude.messages.create(
        model=mlx_model, max_tokens=6, messages=[{"role": "user", "content": "hi"}], extra_body=no_eos
    )
    assert message.model == mlx_model and message.content[0].text
    assert message.usage.output_tokens == 6 and message.stop_reason == "max_tokens"


def test_tool_calls_and_responses_on_a_remote_model(server, sdk):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = sdk.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "tool"}], tools=tools)
    (call,) = reply.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert reply.choices[0].finish_reason == "tool_calls"
    response = sdk.responses.create(model=ECHO, input="hello", store=False)
    assert response.output_text == "a b c" and response.model == ECHO


def test_a_disconnect_ends_the_upstream_request(server, sdk, recorder, upstream, mlx_model, no_eos):
    stream = sdk.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "long"}], stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert recorder.left.wait(10)  # our edge closed its upstream stream
    assert _audit(server, stream.response.headers["X-Request-ID"])["status"] == "cancelled"
    # mlx_lm.server too: a long generation cut short, then the next request is served.
    stream = sdk.chat.completions.create(
        model=mlx_model, messages=[{"role": "user", "content": "hi"}], max_tokens=2000, stream=True, extra_body=no_eos
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    log = upstream.root / "upstream.log"  # its next write failed (a closed pipe or a reset): it stopped generating
    wait_until(
        lambda: any(error in log.read_text() for error in ("BrokenPipeError", "ConnectionResetError")),
        "a failed write in mlx_lm.server's log",
        timeout=10,
    )
    reply = sdk.chat.completions.create(
        model=mlx_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body=no_eos
    )
    assert reply.usage.completion_tokens == 4
    assert _audit(server, stream.response.headers["X-Request-ID"])["status"] == "cancelled"


def test_a_users_limit_applies_to_remote_models(server, recorder):
    user = {"username": "remote-user", "password": "correct horse battery"}
    created = requests.post(server.url + "mlx/api/auth/register", json=user).json()
    requests.patch(server.url + f"mlx/api/users/{created['id']}", headers=server.headers, json={"status": "approved"})
    jwt = requests.post(server.url + "mlx/api/auth/login", json=user).json()["access_token"]
    client = openai.OpenAI(base_url=server.url + "mlx/v1", api_key=jwt, max_retries=0)
    body = {"model": ECHO, "messages": [{"role": "user", "content": "long"}], "stream": True}
    streams = [client.chat.completions.create(**body) for _ in range(2)]  # max_requests_per_user = 2
    try:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**body)
    finally:
        for stream in streams:
            stream.close()


def test_upstream_down_is_a_quick_502_and_up_again_after_the_back_off(server, sdk, upstream, mlx_model):
    upstream.stop()
    body = {"model": mlx_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for _ in range(2):  # the failed connect, then the back-off (no connect)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as failed:
            sdk.chat.completions.create(**body)
        print(f"502 after {time.monotonic() - started:.3f} s")
        assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_unavailable"
    assert _pool(server)[mlx_model]["health"] == "down"
    upstream.start()

    def answer():
        try:
            return sdk.chat.completions.create(**body)
        except openai.APIStatusError as exc:
            assert exc.status_code == 502, exc
            return None

    reply = wait_until(answer, "the upstream to answer after the back-off", timeout=45, interval=0.5)
    assert reply.model == mlx_model
    assert _pool(server)[mlx_model]["health"] == "up"


def test_the_upstream_key_stays_between_us_and_the_upstream(server, sdk, recorder, token):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "leak"}])
    assert "bad key Bearer [key]" in refused.value.body["message"]  # the upstream's message, scrubbed
    assert {r["headers"].get("Authorization") for r in recorder.requests} == {f"Bearer {SECRET}"}
    seen = [
        refused.value.response.text,
        requests.get(server.url + "mlx/v1/models", headers=server.headers).text,
        requests.get(server.url + "mlx/api/pool", headers=server.headers).text,
        requests.get(server.url + "mlx/api/audit", headers=server.headers, params={"limit": 1000}).text,
        requests.get(server.url + "mlx/api/audit/export", headers=server.headers, params={"format": "csv"}).text,
        server.log.read_text(),
    ]
    assert all(SECRET not in text for text in seen)
    assert "remote backend mlx is down" in server.log.read_text()  # the log does tell what happened
