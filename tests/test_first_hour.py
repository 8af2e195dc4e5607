"""The first hour of a new user: with no network, Hub search and downloads fail at once with a
message that says so (and no retries after the network has answered); a demo model's reply
never shows the tokenizer's special tokens; `status()` and the local models say what they are."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest
from conftest import JWT_SECRET, OWNER
from models import build_models
from servers import free_port
from waiting import wait_until_async

UNREACHABLE = {
    "refused": (lambda: f"http://127.0.0.1:{free_port()}", "the connection was refused"),
    "unresolvable": (lambda: "http://nonexistent.invalid", "its host name could not be resolved"),
}
SPECIAL = ("<|im_start|>", "<|endoftext|>", "<|im_end|>")


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-hour")
    folder = build_models(root, ["tiny-demo"])
    for kind in ("embedding", "vision"):
        subprocess.run(
            [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
             "--dir", str(folder), "--kind", kind],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return folder


@pytest.fixture(params=sorted(UNREACHABLE))
def offline(request, monkeypatch, tmp_path):
    """HF_ENDPOINT where no Hub answers (a closed port, a name that does not resolve), set
    before the server starts; returns (endpoint, what the message must say)."""
    make_url, says = UNREACHABLE[request.param]
    endpoint = make_url()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return endpoint, says


@pytest.fixture
def mlx_config(request, demo_models):
    config = {"owner_username": OWNER, "jwt_secret": JWT_SECRET, "model_dirs": [str(demo_models)]}
    if "offline" in request.fixturenames:
        request.getfixturevalue("offline")
    return config


async def test_offline_search_fails_at_once_saying_why(api, offline, caplog):
    endpoint, says = offline
    caplog.set_level(logging.WARNING, logger="huggingface_hub")
    started = time.monotonic()
    reply = await api("GET", "mlx/api/models/search", params={"q": "tiny"})
    took = time.monotonic() - started
    assert reply.code == 502 and reply.body["reason"] == "hub_unreachable", reply.body
    assert "cannot be reached" in reply.body["message"] and says in reply.body["message"]
    assert endpoint.split("//")[1] in reply.body["message"]
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()], "huggingface_hub retried an answer"
    print(f"search failed after {took:.2f} s: {reply.body['message']}")


async def test_offline_download_fails_with_its_reason_kept(api, offline):
    endpoint, says = offline
    started = time.monotonic()
    reply = await api("POST", "mlx/api/downloads", body={"repo_id": "mlx-community/SmolLM2-135M-Instruct-4bit"})
    assert reply.code == 202, reply.body
    download_id = reply.body["id"]
    record = (
        await wait_until_async(
            lambda: api("GET", f"mlx/api/downloads/{download_id}"),
            "the offline download to end",
            timeout=120,
            done=lambda reply: reply.body["status"] not in ("queued", "downloading"),
        )
    ).body
    took = time.monotonic() - started
    assert record["status"] == "failed" and record["error_kind"] == "unreachable", record
    assert "cannot be reached" in record["error"] and says in record["error"]
    # The reason stays with the record: listed later, it still says why.
    (listed,) = [d for d in (await api("GET", "mlx/api/downloads")).body["downloads"] if d["id"] == download_id]
    assert listed["error"] == record["error"]
    print(f"download failed after {took:.2f} s: {record['error']}")


@pytest.mark.parametrize("how", sorted(UNREACHABLE))
def test_the_download_worker_does_not_retry_an_answer(how, tmp_path):
    """The worker on its own: no `retry` event, one `error` event of kind `unreachable`."""
    endpoint = UNREACHABLE[how][0]()
    config = {"repo_id": "org/model", "revision": "main", "cache_dir": str(tmp_path / "hub"), "endpoint": endpoint,
              "token": False}  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "jupyter_mlx_manager.downloads.worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"},
    )  # fmt: skip
    worker.stdin.write(json.dumps(config) + "\n")
    worker.stdin.flush()  # and kept open: the worker takes a closed stdin for a server gone away
    try:
        out = "".join(iter(worker.stdout.readline, ""))
        worker.wait(60)
    finally:
        worker.stdin.close()
        if worker.poll() is None:
            worker.kill()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["ev"] for e in events] == ["error"], out + worker.stderr.read()
    assert events[0]["kind"] == "unreachable" and UNREACHABLE[how][1] in events[0]["message"]


def _special_ids(model_dir) -> dict[str, int]:
    added = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    return {t["content"]: t["id"] for t in added if t["content"] in SPECIAL}


async def test_special_tokens_never_appear_in_reply_text(api, demo_models):
    """A random-weight model pushed (logit_bias) to sample `<|im_start|>` and `<|endoftext|>`:
    they count as completion tokens, and no reply text shows them — as with
    `skip_special_tokens` in other servers."""
    ids = _special_ids(demo_models / "tiny-demo")
    eos = json.loads((demo_models / "tiny-demo" / "config.json").read_text())["eos_token_id"]
    bias = {str(ids["<|im_start|>"]): 8, str(ids["<|endoftext|>"]): 8, str(eos): -100}
    body = {"model": "local/tiny-demo", "max_tokens": 24, "logit_bias": bias, "seed": 1}

    chat = await api("POST", "mlx/v1/chat/completions", body={**body, "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.code == 200, chat.body
    assert chat.body["usage"]["completion_tokens"] == 24  # they were sampled...
    text = chat.body["choices"][0]["message"]["content"] or ""
    assert not [s for s in SPECIAL if s in text], text  # ...and are not text

    completion = await api("POST", "mlx/v1/completions", body={**body, "prompt": "Once upon a time"})
    assert completion.code == 200, completion.body
    assert not [s for s in SPECIAL if s in completion.body["choices"][0]["text"]], completion.body

    # A vision model's runner (mlx-vlm) too; its tokenizer is the text demo's plus vision tokens.
    vision_ids = _special_ids(demo_models / "tiny-vision")
    vision_bias = {str(vision_ids["<|im_start|>"]): 8, str(vision_ids["<|endoftext|>"]): 8, str(eos): -100}
    seen = await api(
        "POST", "mlx/v1/chat/completions",
        body={**body, "model": "local/tiny-vision", "logit_bias": vision_bias,
              "messages": [{"role": "user", "content": "Hi"}]},
    )  # fmt: skip
    assert seen.code == 200, seen.body
    assert not [s for s in SPECIAL if s in (seen.body["choices"][0]["message"]["content"] or "")], seen.body

    streamed = await api("POST", "mlx/v1/chat/completions",
                         body={**body, "stream": True, "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
    assert streamed.code == 200
    pieces = [
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in streamed.body.splitlines()
        if line.startswith("data: {")
    ]
    assert not [s for s in SPECIAL if s in "".join(pieces)], pieces


async def test_demo_models_are_labelled_and_status_is_a_table(api):
    from jupyter_mlx_manager.client.results import LocalModels, ServerStatus

    local = (await api("GET", "mlx/api/models/local")).body["models"]
    (demo,) = [m for m in local if m["id"] == "local/tiny-demo"]
    assert demo["demo"] is True
    assert "demo · random weights" in LocalModels(local)._repr_html_()

    status = ServerStatus((await api("GET", "mlx/api/status")).body)
    rows = dict(status.rows())
    assert rows["version"] and rows["device"] and "of at most" in rows["loaded models"]
    assert "GiB" in rows["memory"] and "<table>" in status._repr_html_() and "{" not in status._repr_html_()


async def test_a_model_of_another_kind_is_named_with_the_right_article(api):
    body = {"model": "local/tiny-embedding", "messages": [{"role": "user", "content": "Hi"}]}
    refused = await api("POST", "mlx/v1/chat/completions", body=body)
    assert refused.code == 400 and "is an embedding model" in refused.body["error"]["message"], refused.body
