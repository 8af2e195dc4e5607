"""Model discovery and downloads against a local Hub (`jupyter_mlx_manager.devhub`) with the
real huggingface_hub client: search, the local catalog, downloads (cancel, dropped
connections, restarts, hostile names), SSE progress, and deletes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

import psutil
import pytest
import requests
from conftest import JWT_SECRET, server_config
from models import build_models, eos_id
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from waiting import wait_until, wait_until_async

from jupyter_mlx_manager.devhub import DevHub
from jupyter_mlx_manager.models.hub import PIPELINE_KINDS

TINY = "mlx-test/tiny-llama"
GATED_TOKEN = "hf_gated_" + "s3cret" * 4
FINAL = ("completed", "failed", "cancelled")
BAD_IDS = [
    "../x",
    "/etc/passwd",
    "a/b/c",
    "a/b\n",
    "mlx-test/tiny-llam\u0430",
    "a" * 100 + "/" + "b" * 99,
    "x",
    "a/..",
    "./a",
]


def fake_safetensors(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    sizes = {"U32": 4, "F32": 4, "F16": 2, "BF16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def quantized_files(model_type: str, bits: int, rows: int, context: int, template: str | None) -> dict[str, bytes]:
    """A fake quantized MLX model: one quantized linear layer (rows x 512) and an embedding."""
    files = {
        "config.json": json.dumps({
            "model_type": model_type, "architectures": [f"{model_type.capitalize()}ForCausalLM"],
            "quantization": {"group_size": 64, "bits": bits}, "max_position_embeddings": context,
        }).encode(),
        "model.safetensors": fake_safetensors({
            "model.embed_tokens.weight": ("F16", [100, 64]),
            "model.layers.0.mlp.down_proj.weight": ("U32", [rows, 512 * bits // 32]),
            "model.layers.0.mlp.down_proj.scales": ("F16", [rows, 512 // 64]),
            "model.layers.0.mlp.down_proj.biases": ("F16", [rows, 512 // 64]),
        }),
    }  # fmt: skip
    if template is not None:
        files["tokenizer_config.json"] = json.dumps({"chat_template": template}).encode()
    return files


# Hub repos of each kind: (pipeline_tag, library_name, config, the kind search reports).
KIND_REPOS = {
    "kinds/vlm-chat": ("image-text-to-text", "mlx", {"model_type": "llava", "vision_config": {}}, "vision"),
    "kinds/vlm-caption": ("image-to-text", "mlx", {"model_type": "llava"}, "vision"),
    "kinds/embed-fe": ("feature-extraction", "mlx", {"model_type": "bert"}, "embedding"),
    "kinds/embed-st": ("sentence-similarity", "sentence-transformers", {"model_type": "bert"}, "embedding"),
    "kinds/whisper-asr": ("automatic-speech-recognition", "mlx", {"model_type": "whisper"}, "transcription"),
    "kinds/kokoro-tts": ("text-to-speech", "mlx", {"model_type": "kokoro"}, "speech"),
    "kinds/lm-untagged": (None, "mlx-lm", {"model_type": "phi3"}, "text"),
    "kinds/whisper-untagged": (None, "mlx", {"model_type": "whisper"}, "transcription"),
    "kinds/mystery": (None, "mlx", {"model_type": "mystery"}, None),
}
KIND_OF = {repo_id: spec[3] for repo_id, spec in KIND_REPOS.items()}

QWEN_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}<tool_call>\n<function={{ name }}>"


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("hub-models"), ["tiny"])


@pytest.fixture(scope="session")
def devhub(demo_models):
    hub = DevHub()
    tiny = demo_models / "tiny"
    hub.add_repo(TINY, tiny, downloads=500, likes=10, last_modified="2025-03-01T00:00:00.000Z")
    for name in ("a", "b", "c", "slow", "drops"):
        hub.add_repo(f"mlx-test/copy-{name}", tiny, downloads=1)
    hub.add_repo("other-org/tiny-llama", tiny, downloads=7, likes=1)
    hub.add_repo("plain-org/hf-only", tiny, library_name="transformers", mlx=False)  # to convert
    hub.add_repo(
        "mlx-test/qwen-mini-4bit", files=quantized_files("qwen2", 4, 256, 32768, QWEN_TEMPLATE), downloads=100, likes=50
    )
    hub.add_repo("mlx-test/llama-big-8bit", files=quantized_files("llama", 8, 4096, 8192, None), downloads=50, likes=5)
    hub.add_repo(
        "mlx-test/evil",
        files={"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * 16, "../evil": b"gotcha"},
    )
    hub.add_repo("mlx-test/gated", tiny, token=GATED_TOKEN)
    hub.add_repo(
        "mlx-test/no-weights", files={"config.json": b'{"model_type": "llama"}', "pytorch_model.bin": b"\0" * 16}
    )
    for n, (repo_id, (pipeline, library, config, _)) in enumerate(KIND_REPOS.items()):
        hub.add_repo(repo_id, files={"config.json": json.dumps(config).encode()}, pipeline_tag=pipeline,
                     library_name=library, downloads=2 + n)  # fmt: skip
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(devhub):
    devhub.reset()
    yield devhub
    devhub.reset()


@pytest.fixture
def hf_cache(hub, tmp_path, monkeypatch):
    """HF_ENDPOINT and HF_HOME for the server, set before it starts."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hf" / "hub"


@pytest.fixture
def model_dir(tmp_path, demo_models):
    """A per-test model folder (tests delete from it) with the demo model and a fake quantized one."""
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(demo_models / "tiny", folder / "tiny")
    quantized = folder / "qwen-q4"
    quantized.mkdir()
    for name, data in quantized_files("qwen2", 4, 256, 32768, QWEN_TEMPLATE).items():
        (quantized / name).write_bytes(data)
    return folder


@pytest.fixture
def mlx_config(hf_cache, model_dir):
    return server_config(model_dir, default_keep_alive=-1, max_concurrent_downloads=2, hf_token=GATED_TOKEN)


async def wait_download(api, download_id: int, until=FINAL, timeout: float = 30.0, check=None) -> dict:
    """The download's record once its status is in `until` (or `until(record)` holds); `check`
    is asserted of every record seen on the way."""

    async def poll() -> dict:
        record = (await api("GET", f"mlx/api/downloads/{download_id}")).body
        if check is not None:
            check(record)
        return record

    done = (lambda record: record["status"] in until) if isinstance(until, tuple) else until
    return await wait_until_async(poll, f"download {download_id}", timeout, interval=0.05, done=done)


async def start_download(api, repo_id: str, **body) -> dict:
    reply = await api("POST", "mlx/api/downloads", body={"repo_id": repo_id, **body})
    assert reply.code == 202, reply.body
    return reply.body


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return (
        {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}
        if root.exists()
        else {}
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_files(snapshot: Path, source: Path) -> None:
    for f in source.iterdir():
        assert sha256(snapshot / f.name) == sha256(f), f.name


@pytest.fixture
def sse(jp_http_port, jp_base_url):
    """`await sse(path, token=…, headers=…)` → (code, headers, [(time, kind, value)]) for a whole stream."""

    async def read(path: str, token: str | None = None, headers: dict | None = None, timeout: float = 30):
        url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}{path}" + (f"?token={token}" if token else "")
        blocks, buffer = [], b""

        def on_chunk(chunk: bytes) -> None:
            nonlocal buffer
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                now = time.monotonic()
                for line in block.decode().splitlines():
                    if line.startswith("data: "):
                        blocks.append((now, "data", json.loads(line[6:])))
                    elif line.startswith(":"):
                        blocks.append((now, "comment", line[1:].strip()))
                    elif line.startswith("retry:"):
                        blocks.append((now, "retry", int(line[6:])))

        request = HTTPRequest(url, headers=headers or {}, streaming_callback=on_chunk, request_timeout=timeout)
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code != 200 and buffer:
            blocks.append((time.monotonic(), "body", json.loads(buffer)))
        return response.code, response.headers, blocks

    return read


async def ticket(api) -> str:
    reply = await api("POST", "mlx/api/auth/ticket")
    assert reply.code == 201, reply.body
    return reply.body["token"]


# -- the local Hub itself, with huggingface_hub's own download functions ----------------------------


def test_devhub_serves_the_real_client(hub, tmp_path, demo_models):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=hub.url, token=False)
    listed = list(api.list_models(search="tiny-llama", author="mlx-test", filter="mlx", sort="downloads", limit=5,
                                  expand=["downloads", "likes", "tags", "safetensors", "config"]))  # fmt: skip
    assert (
        [m.id for m in listed] == [TINY]
        and listed[0].safetensors.total == 106_816
        and listed[0].config["model_type"] == "llama"
    )
    info = api.model_info(TINY, files_metadata=True)
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs.sha256 == sha256(demo_models / "tiny" / "model.safetensors") and weights.size == 429_308
    assert {f.path for f in api.list_repo_tree(TINY, recursive=True)} == {
        p.name for p in (demo_models / "tiny").iterdir()
    }
    hub.drop_after_bytes, hub.drop_count = 100_000, 1  # huggingface_hub resumes the cut transfer itself
    path = snapshot_download(TINY, cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    assert_same_files(Path(path), demo_models / "tiny")
    heads = [e for e in hub.log if e["method"] == "HEAD"]
    assert heads and all(e["status"] == 200 for e in heads)
    one = hf_hub_download(
        TINY, "config.json", revision=info.sha, cache_dir=tmp_path / "d", endpoint=hub.url, token=False
    )
    assert Path(one).read_bytes() == (demo_models / "tiny" / "config.json").read_bytes()
    with pytest.raises(GatedRepoError):
        snapshot_download("mlx-test/gated", cache_dir=tmp_path / "e", endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("mlx-test/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(TINY, revision="v9")


# -- the whole path ---------------------------------------------------------------------------------


async def test_download_then_catalog_then_load_and_chat(api, hf_cache, demo_models, hub):
    record = await start_download(api, TINY)
    assert set(record) >= {"id", "repo_id", "revision", "status", "downloaded_bytes", "total_bytes", "files_done",
                           "files_total", "error", "created_at"}  # fmt: skip
    assert record["status"] in ("queued", "downloading") and record["revision"] == "main"
    done = await wait_download(api, record["id"])
    assert done["status"] == "completed", done
    # 6 files: config, weights, tokenizer (3) and the demo marker, which a demo model keeps wherever it goes
    assert done["downloaded_bytes"] == done["total_bytes"] > 400_000 and done["files_done"] == done["files_total"] == 6
    assert (await api("GET", "mlx/api/downloads")).body["downloads"][0]["id"] == record["id"]

    snapshot = hf_cache / "models--mlx-test--tiny-llama" / "snapshots" / done["commit"]
    assert_same_files(snapshot, demo_models / "tiny")
    assert (hf_cache / "models--mlx-test--tiny-llama" / "refs" / "main").read_text() == done["commit"]
    assert not list(hf_cache.rglob("*.incomplete"))

    local = (await api("GET", "mlx/api/models/local")).body["models"]
    mine = next(m for m in local if m["id"] == TINY)
    assert mine["source"] == "hub" and mine["model_type"] == "llama" and mine["loaded"] is False
    assert mine["parameters"] == 106_816 and mine["tool_calling"] is True and mine["context_length"] == 2048
    assert TINY in [m["id"] for m in (await api("GET", "mlx/v1/models")).body["data"]]

    assert (await api("POST", "mlx/api/pool/load", body={"model": TINY})).code == 200
    chat = await api(
        "POST",
        "mlx/v1/chat/completions",
        body={"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0,
              "logit_bias": {str(eos_id(demo_models / "tiny")): -100}},
    )  # fmt: skip
    assert chat.code == 200, chat.body
    assert chat.body["usage"]["completion_tokens"] == 3
    assert (await api("GET", f"mlx/api/models/local/{TINY}")).body["loaded"] is True

    actions = [
        (r["action"], r["status"]) for r in (await api("GET", "mlx/api/audit", params={"limit": "50"})).body["records"]
    ]
    assert ("download.start", "ok") in actions and ("download.complete", "ok") in actions
    # Each file was fetched once, by commit, and no file outside the MLX allow-list was asked for.
    gets = [e for e in hub.log if e["method"] == "GET" and "/resolve/" in e["path"]]
    assert len(gets) == done["files_total"] == 6 and all(f"/resolve/{done['commit']}/" in e["path"] for e in gets)


async def test_throttled_download_streams_monotonic_progress_to_two_followers(api, sse, hub, jp_auth_header):
    jupyter_headers = dict(jp_auth_header)
    hub.throttle_bps = 300_000
    record = await start_download(api, "mlx-test/copy-slow")
    path = f"mlx/api/downloads/{record['id']}/progress"
    # One follower with a ticket (as EventSource), one with the Jupyter token (as a kernel).
    (code, headers, blocks), (code2, _, blocks2) = await asyncio.gather(
        sse(path, token=await ticket(api)), sse(path, headers=jupyter_headers)
    )
    assert code == code2 == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    assert blocks[0][1] == "retry"
    for stream in (blocks, blocks2):
        events = [(t, v) for t, kind, v in stream if kind == "data"]
        assert len(events) >= 4, events
        sizes = [v["downloaded_bytes"] for _, v in events]
        assert sizes == sorted(sizes), sizes
        final = events[-1][1]
        assert final["final"] is True and final["status"] == "completed"
        assert final["downloaded_bytes"] == final["total_bytes"] == sizes[-1]
        assert all(not v["final"] for _, v in events[:-1])
        assert {"rate_bps", "eta_s"} <= set(events[0][1])
        assert any(v["rate_bps"] for _, v in events) and any(v["eta_s"] for _, v in events)
        gaps = [b[0] - a[0] for a, b in zip(events, events[1:])]
        assert min(gaps) >= 0.15, gaps  # at most 4 events a second
    # A finished download's stream is one final event.
    code, _, blocks = await sse(path, token=await ticket(api))
    assert code == 200 and [v["final"] for _, kind, v in blocks if kind == "data"] == [True]


async def test_sse_without_a_valid_token_is_401(api, sse, make_user):
    record = await start_download(api, "mlx-test/copy-a")
    path = f"mlx/api/downloads/{record['id']}/progress"
    for token, headers in ((None, None), ("not-a-jwt", None), (None, {"Authorization": "Bearer e30.e30.sig"})):
        code, _, blocks = await sse(path, token=token, headers=headers)
        assert code == 401, (token, headers, blocks)
    code, _, _ = await sse("mlx/api/downloads/999999/progress")
    assert code == 401  # authentication comes before the lookup
    code, _, _ = await sse("mlx/api/downloads/999999/progress", token=await ticket(api))
    assert code == 404
    # Only tickets travel in URLs: an access token there is refused.
    user, access = await make_user("pat")
    code, _, _ = await sse(path, token=access)
    assert code == 401
    # A ticket of a user who was disabled since: 403, as everywhere.
    pat_ticket = (await api("POST", "mlx/api/auth/ticket", auth=access)).body["token"]
    assert (await api("PATCH", f"mlx/api/users/{user['id']}", body={"status": "disabled"})).code == 200
    code, _, _ = await sse(path, token=pat_ticket)
    assert code == 403
    await wait_download(api, record["id"])


async def test_cancel_stops_the_transfer_and_removes_partial_files(api, hub, hf_cache, make_user):
    hub.throttle_bps = 100_000
    record = await start_download(api, "mlx-test/copy-b")
    _, kim = await make_user("kim")
    refused = await api("DELETE", f"mlx/api/downloads/{record['id']}", auth=kim)
    assert refused.code == 403 and refused.body["reason"] == "not_yours"  # only its starter or an admin
    await wait_download(api, record["id"], until=lambda r: r["downloaded_bytes"] > 60_000, timeout=20)
    assert list(hf_cache.rglob("*.incomplete")), "a partial file while downloading"
    delete = await api("DELETE", "mlx/api/models/local/mlx-test/copy-b")
    assert delete.code in (404, 409)  # not local yet; never deletes under a running download
    reply = await api("DELETE", f"mlx/api/downloads/{record['id']}")
    assert reply.code == 200 and reply.body["status"] == "cancelled", reply.body
    # The Hub stops sending within 2 s (it notices the closed connection at its next write).
    await wait_until_async(
        lambda: all(e["finished"] is not None for e in hub.log), "the transfer to stop", timeout=2.0, interval=0.02
    )
    sent = sum(hub.bytes_sent.values())
    assert sent < 429_308
    await asyncio.sleep(0.3)
    assert sum(hub.bytes_sent.values()) == sent
    assert not list(hf_cache.rglob("*.incomplete"))
    assert not (hf_cache / "models--mlx-test--copy-b").exists()
    assert (await api("GET", f"mlx/api/downloads/{record['id']}")).body["status"] == "cancelled"
    assert (await api("DELETE", f"mlx/api/downloads/{record['id']}")).body["status"] == "cancelled"  # idempotent
    assert "mlx-test/copy-b" not in [m["id"] for m in (await api("GET", "mlx/api/models/local")).body["models"]]
    actions = [
        (r["action"], r["status"]) for r in (await api("GET", "mlx/api/audit", params={"limit": "50"})).body["records"]
    ]
    assert ("download.cancel", "cancelled") in actions


async def test_dropped_connections_and_a_server_error_are_retried(api, hub, hf_cache, demo_models):
    hub.drop_after_bytes, hub.drop_count = 100_000, 2
    hub.fail_requests = {1}  # the repo listing answers 500 once
    hub.fail_next(1, "/resolve/")  # and so does the first file
    record = await start_download(api, "mlx-test/copy-drops")
    done = await wait_download(api, record["id"])
    assert done["status"] == "completed", done
    assert_same_files(hf_cache / "models--mlx-test--copy-drops" / "snapshots" / done["commit"], demo_models / "tiny")
    gets = hub.file_requests("mlx-test/copy-drops", "model.safetensors")
    assert any(e["range_start"] for e in gets), "resumed with a Range request"
    assert hub.bytes_sent["mlx-test/copy-drops/model.safetensors"] < 2 * 429_308
    assert [e["status"] for e in hub.log if e["path"].startswith("/api/models/")][:2] == [500, 200]


async def test_two_at_once_a_third_waits_and_duplicates_share_a_record(api, hub, sse):
    hub.throttle_bps = 400_000
    records = [await start_download(api, f"mlx-test/copy-{n}") for n in ("a", "b", "c")]
    again = await start_download(api, "mlx-test/copy-a")
    assert again["id"] == records[0]["id"]
    conflict = await api("POST", "mlx/api/downloads", body={"repo_id": "mlx-test/copy-a", "revision": "v2"})
    assert conflict.code == 409 and conflict.body["reason"] == "download_in_progress"

    from jupyter_mlx_manager.handlers.downloads import DownloadProgressHandler

    DownloadProgressHandler.keepalive_seconds = 0.3
    try:
        follow = asyncio.ensure_future(sse(f"mlx/api/downloads/{records[2]['id']}/progress", token=await ticket(api)))
        seen = set()

        async def listed_statuses() -> list[str]:
            # One listing is one snapshot (three GETs in a row could straddle a hand-over).
            listed = {d["id"]: d["status"] for d in (await api("GET", "mlx/api/downloads")).body["downloads"]}
            statuses = [listed[r["id"]] for r in records]
            seen.add(tuple(statuses))
            assert statuses.count("downloading") <= 2
            return statuses

        statuses = await wait_until_async(
            listed_statuses,
            "the three downloads to end",
            timeout=20,
            interval=0.05,
            done=lambda s: set(s) <= set(FINAL),
        )
        assert ("downloading", "downloading", "queued") in seen, seen
        assert all(s == "completed" for s in statuses), statuses
        code, _, blocks = await follow
    finally:
        DownloadProgressHandler.keepalive_seconds = 15.0
    assert code == 200
    assert ("comment", "keepalive") in [(kind, v) for _, kind, v in blocks], "keepalives while queued"
    assert [v["status"] for _, kind, v in blocks if kind == "data"][-1] == "completed"


async def test_bad_ids_are_refused_and_touch_nothing(
    api, http_server_client, jp_base_url, jp_auth_header, hf_cache, model_dir, tmp_path
):
    before = {**tree(hf_cache), **tree(model_dir)}
    for bad in BAD_IDS:
        reply = await api("POST", "mlx/api/downloads", body={"repo_id": bad})
        assert reply.code == 400 and reply.body["reason"] == "invalid_model_id", (bad, reply.body)
        for method in ("GET", "DELETE"):
            response = await http_server_client.fetch(
                f"{jp_base_url}mlx/api/models/local/{quote(bad, safe='')}",
                method=method,
                headers=jp_auth_header,
                raise_error=False,
            )
            assert response.code == 400, (bad, method, response.code)
    for body in ({}, {"repo_id": 5}, {"repo_id": TINY, "revision": "../main"}, {"repo_id": TINY, "revision": 3},
                 {"repo_id": "local/tiny"}):  # fmt: skip
        assert (await api("POST", "mlx/api/downloads", body=body)).code == 400, body
    assert {**tree(hf_cache), **tree(model_dir)} == before
    assert (await api("GET", "mlx/api/downloads")).body["downloads"] == []

    # A Hub repo whose listing names "../evil" is refused before anything is written.
    record = await start_download(api, "mlx-test/evil")
    failed = await wait_download(api, record["id"])
    assert failed["status"] == "failed" and failed["error_kind"] == "unsafe_file_name", failed
    assert "../evil" in failed["error"]
    assert not (hf_cache / "models--mlx-test--evil").exists()
    assert not [p for p in tmp_path.rglob("*evil*")]
    actions = [
        (r["action"], r["error_type"])
        for r in (await api("GET", "mlx/api/audit", params={"limit": "50"})).body["records"]
    ]
    assert ("download.fail", "unsafe_file_name") in actions

    # Not an MLX model, a missing repo, a missing revision: failed with a reason.
    for repo, kind in (("mlx-test/no-weights", "not_mlx"), ("mlx-test/nope", "not_found")):
        failed = await wait_download(api, (await start_download(api, repo))["id"])
        assert failed["error_kind"] == kind, failed
    failed = await wait_download(api, (await start_download(api, TINY, revision="v9"))["id"])
    assert failed["error_kind"] == "revision_not_found", failed


async def test_disk_space_is_checked_first(api, mlx_app, hf_cache):
    mlx_app.downloads.free_bytes = lambda path: 1024
    failed = await wait_download(api, (await start_download(api, TINY))["id"])
    assert failed["status"] == "failed" and failed["error_kind"] == "disk_space"
    assert "not enough free disk space" in failed["error"]
    assert not list(hf_cache.rglob("*.incomplete")) and not list(hf_cache.rglob("blobs/*"))


async def test_gated_repo_uses_the_token_and_never_logs_it(api, hub, caplog, mlx_app, tmp_path):
    done = await wait_download(api, (await start_download(api, "mlx-test/gated"))["id"])
    assert done["status"] == "completed", done
    assert GATED_TOKEN not in caplog.text
    assert GATED_TOKEN not in json.dumps((await api("GET", "mlx/api/downloads")).body)
    database = Path(mlx_app.data_dir) / "mlx_manager.sqlite3"
    assert GATED_TOKEN.encode() not in database.read_bytes()


# -- search and the local catalog ---------------------------------------------------------------


async def test_search_filters_sorts_and_validates(api, hub):
    await wait_download(api, (await start_download(api, "mlx-test/copy-c"))["id"])

    async def search(**params):
        reply = await api("GET", "mlx/api/models/search", params=params)
        assert reply.code == 200, reply.body
        return reply.body["models"]

    found = await search(q="tiny-llama")
    assert {m["id"] for m in found} == {TINY, "other-org/tiny-llama"}
    assert [m["id"] for m in found] == [TINY, "other-org/tiny-llama"]  # by downloads
    first = found[0]
    assert first["downloads"] == 500 and first["likes"] == 10 and first["model_type"] == "llama"
    assert first["architecture"] == "LlamaForCausalLM"
    assert first["quantization"] is None and first["parameters"] == 106_816 and first["size_bytes"] == 106_816 * 4
    assert "mlx" in first["tags"] and first["local"] is False
    assert [m["id"] for m in await search(q="tiny-llama", author="other-org")] == ["other-org/tiny-llama"]
    assert [m["id"] for m in await search(arch="qwen2")] == ["mlx-test/qwen-mini-4bit"]
    q4 = (await search(quant="4"))[0]
    assert q4["id"] == "mlx-test/qwen-mini-4bit" and q4["quantization"] == {"bits": 4, "group_size": 64}
    assert q4["parameters"] == 256 * 512 + 100 * 64 and q4["size_bytes"] == 256 * 64 * 4 + (2 * 256 * 8 + 6400) * 2
    assert [m["id"] for m in await search(quant="8bit")] == ["mlx-test/llama-big-8bit"]
    small = await search(max_size_gb="0.0002")  # 210 kB: the 4-bit toy fits, the float32 demo does not
    assert "mlx-test/qwen-mini-4bit" in [m["id"] for m in small] and TINY not in [m["id"] for m in small]
    assert all(m["size_bytes"] <= 0.0002 * 1024**3 for m in small)
    assert [m["id"] for m in await search(sort="likes", limit="2")] == ["mlx-test/qwen-mini-4bit", TINY]
    assert [m["id"] for m in await search(sort="size", q="bit")] == [
        "mlx-test/qwen-mini-4bit",
        "mlx-test/llama-big-8bit",
    ]
    assert next(m for m in await search(q="copy-c"))["local"] is True
    assert await search(q="no-such-model") == []
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"quant": "7"}, {"max_size_gb": "-1"},
                   {"max_size_gb": "big"}, {"sort": "random"}, {"arch": "a b"}, {"q": "caf\u00e9"}, {"author": "../x"}):  # fmt: skip
        reply = await api("GET", "mlx/api/models/search", params=params)
        assert reply.code == 400, (params, reply.body)
    # Only the MLX library is searched, on the Hub's side.
    listing = [e for e in hub.log if e["path"] == "/api/models"]
    assert listing


async def test_search_lists_models_to_convert_with_format_any(api, hub):
    async def ids(**params):
        reply = await api("GET", "mlx/api/models/search", params={"q": "hf-only", **params})
        assert reply.code == 200, reply.body
        return [m["id"] for m in reply.body["models"]]

    assert await ids() == []  # MLX models only, by default
    assert await ids(format="any") == ["plain-org/hf-only"]  # safetensors repos, to convert to MLX
    reply = await api("GET", "mlx/api/models/search", params={"format": "gguf"})
    assert reply.code == 400 and reply.body["reason"] == "invalid_format"


async def test_search_kinds_and_the_kind_filter(api, hub):
    async def search(**params):
        reply = await api("GET", "mlx/api/models/search", params={"limit": "100", **params})
        assert reply.code == 200, reply.body
        return reply.body["models"]

    # Each result's kind: the Hub's pipeline tag, else the library, else the config; None if unknown.
    found = {m["id"]: m for m in await search(q="kinds/")}
    assert {i: m["kind"] for i, m in found.items()} == KIND_OF
    assert found["kinds/vlm-chat"]["pipeline_tag"] == "image-text-to-text"
    assert (await search(q="tiny-llama"))[0]["kind"] == "text"
    # kind= narrows the Hub's query (one listing per pipeline tag of the kind, merged) and the results.
    for kind in ("vision", "embedding", "transcription", "speech"):
        hub.log.clear()
        got = await search(kind=kind, q="kinds/")
        assert {m["id"] for m in got} == {i for i, k in KIND_OF.items() if k == kind and KIND_REPOS[i][0]}, kind
        asked = sorted(
            parse_qs(e["query"]).get("pipeline_tag", [None])[0]
            for e in hub.log if e["path"] == "/api/models"
        )  # fmt: skip
        assert asked == sorted(t for t, k in PIPELINE_KINDS.items() if k == kind), (kind, asked)
    # Two listings merged, still by downloads, and cut to the limit.
    merged = await search(kind="vision", q="kinds/", sort="downloads")
    assert [m["id"] for m in merged] == ["kinds/vlm-caption", "kinds/vlm-chat"]
    assert [m["id"] for m in await search(kind="vision", q="kinds/", limit="1")] == ["kinds/vlm-caption"]
    text = {m["id"] for m in await search(kind="text")}
    assert TINY in text and "mlx-test/qwen-mini-4bit" in text and not text & set(KIND_OF)
    assert await search(kind="speech", q="tiny-llama") == []
    for bad in ("audio", "TEXT", "text,vision", "x" * 200):
        reply = await api("GET", "mlx/api/models/search", params={"kind": bad})
        assert reply.code == 400 and reply.body["reason"] == "invalid_kind", (bad, reply.body)
        assert "kind" in reply.body["message"]


async def test_local_catalog_characteristics(api):
    models = {m["id"]: m for m in (await api("GET", "mlx/api/models/local")).body["models"]}
    assert set(models) == {"local/tiny", "local/qwen-q4"}
    tiny = models["local/tiny"]
    assert tiny["source"] == "folder" and tiny["architecture"] == "LlamaForCausalLM" and tiny["model_type"] == "llama"
    assert tiny["parameters"] == 106_816 and tiny["quantization"] is None and tiny["dtype"] == "float32"
    assert tiny["context_length"] == 2048 and tiny["chat_template"] is True
    assert tiny["tool_calling"] is True and tiny["tool_parser"] == "json_tools"
    assert tiny["size_bytes"] > 400_000 and tiny["loaded"] is False and tiny["remote_code"] is False
    q4 = models["local/qwen-q4"]
    assert q4["quantization"] == {"bits": 4, "group_size": 64, "mode": "affine"}
    assert q4["parameters"] == 256 * 512 + 100 * 64  # packed weights unpacked; scales and biases not counted
    assert q4["context_length"] == 32768 and q4["tool_parser"] == "qwen3_coder" and q4["model_type"] == "qwen2"

    one = await api("GET", "mlx/api/models/local/local/tiny")
    assert one.code == 200 and one.body["id"] == "local/tiny" and one.body["parameters"] == 106_816
    assert (await api("GET", "mlx/api/models/local/local/missing")).code == 404
    assert (await api("GET", "mlx/api/models/local/org/missing")).code == 404
    await api("POST", "mlx/api/pool/load", body={"model": "local/tiny"})
    assert (await api("GET", "mlx/api/models/local/local/tiny")).body["loaded"] is True


async def test_delete_is_admin_only_refuses_a_loaded_model_unless_forced(api, make_user, model_dir, hf_cache):
    _, token = await make_user("kim")
    assert (await api("DELETE", "mlx/api/models/local/local/tiny", auth=token)).code == 403
    assert (model_dir / "tiny").is_dir()
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/tiny"})).code == 200
    refused = await api("DELETE", "mlx/api/models/local/local/tiny")
    assert refused.code == 409 and refused.body["reason"] == "model_loaded"
    assert (await api("DELETE", "mlx/api/models/local/local/tiny", params={"force": "maybe"})).code == 400
    forced = await api("DELETE", "mlx/api/models/local/local/tiny", params={"force": "1"})
    assert forced.code == 200 and forced.body["deleted"] is True and forced.body["freed_bytes"] > 400_000
    assert not (model_dir / "tiny").exists()
    assert (await api("GET", "mlx/api/pool")).body["models"] == []
    assert (await api("DELETE", "mlx/api/models/local/local/tiny")).code == 404

    await wait_download(api, (await start_download(api, TINY))["id"])
    assert (await api("DELETE", f"mlx/api/models/local/{TINY}")).code == 200
    assert not (hf_cache / "models--mlx-test--tiny-llama").exists()
    assert TINY not in [m["id"] for m in (await api("GET", "mlx/api/models/local")).body["models"]]
    records = (await api("GET", "mlx/api/audit", params={"limit": "50"})).body["records"]
    assert [r["model"] for r in records if r["action"] == "model.delete"] == [TINY, "local/tiny"]


# -- a real server process, restarted mid-download ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp_path: Path, env: dict, port: int, token: str, log_name: str) -> subprocess.Popen:
    with open(tmp_path / log_name, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True",
                f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                "--ServerApp.jpserver_extensions=jupyter_server_terminals=False", f"--ServerApp.root_dir={tmp_path}",
                f"--MLXManager.data_dir={tmp_path / 'data'}", "--MLXManager.owner_username=owner",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def ready() -> bool:
        try:
            if requests.get(
                f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}, timeout=2
            ).ok:
                return True
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or not answering yet
            pass
        assert process.poll() is None, (tmp_path / log_name).read_text()
        return False

    wait_until(ready, "the server to start", timeout=60, interval=0.2)
    return process


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_server_restart_resumes_the_download(hub, tmp_path, demo_models, how):
    env = {
        **os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_MLX_MANAGER_JWT_SECRET": JWT_SECRET,
    }  # fmt: skip
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        env.pop(name, None)
    port, token = _free_port(), "t-" + os.urandom(8).hex()
    url, headers = f"http://127.0.0.1:{port}/mlx/api/downloads", {"Authorization": f"token {token}"}
    size = 429_308  # model.safetensors
    hub.throttle_bps = 150_000
    server = _start_server(tmp_path, env, port, token, "first.log")
    try:
        record = requests.post(url, json={"repo_id": "mlx-test/copy-slow"}, headers=headers, timeout=10).json()
        wait_until(
            lambda: requests.get(f"{url}/{record['id']}", headers=headers, timeout=10).json(),
            "150 kB downloaded",
            timeout=20,
            interval=0.05,
            done=lambda r: r["downloaded_bytes"] >= 150_000,
        )
        workers = [
            p
            for p in psutil.Process(server.pid).children(recursive=True)
            if "downloads.worker" in " ".join(p.cmdline())
        ]
        assert len(workers) == 1
        server.send_signal(getattr(signal, how))
        server.wait(30)
        psutil.wait_procs(workers, timeout=10)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), (
            "the worker outlived the server"
        )
    finally:
        if server.poll() is None:
            server.kill()
    partials = list((tmp_path / "hf" / "hub").rglob("*.incomplete"))
    assert partials and partials[0].stat().st_size > 100_000
    requests_before = len(hub.log)

    hub.throttle_bps = None
    server = _start_server(tmp_path, env, port, token, "second.log")
    try:
        done = wait_until(
            lambda: requests.get(f"{url}/{record['id']}", headers=headers, timeout=10).json(),
            "the resumed download to end",
            timeout=30,
            interval=0.05,
            done=lambda r: r["status"] in FINAL,
        )
        assert done["status"] == "completed", done
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    refetched = [
        e for e in hub.log[requests_before:] if e["method"] == "GET" and e["path"].endswith("/model.safetensors")
    ]
    assert len(refetched) == 1 and refetched[0]["range_start"] > 100_000
    assert refetched[0]["bytes"] < size - 100_000, "resumed, not started over"
    snapshot = tmp_path / "hf" / "hub" / "models--mlx-test--copy-slow" / "snapshots" / done["commit"]
    assert_same_files(snapshot, demo_models / "tiny")
