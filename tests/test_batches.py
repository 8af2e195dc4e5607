"""OpenAI's Files and Batch API through the unmodified `openai` SDK, a real server, real runners
and real SQLite: results, bad lines, own-only access, cancel, budgets, a restart mid-batch, and
the priority of interactive requests over batch lines."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import signal
import subprocess
import sys

import openai
import pytest
import requests
from conftest import server_config
from models import build_models, eos_id
from servers import jupyter_server
from waiting import wait_until, wait_until_async

from jupyter_mlx_manager.client import BatchJob, connect
from jupyter_mlx_manager.inference.limits import RequestLimits

MODEL = "local/tiny-demo"


EMBED = "local/tiny-embedding"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-models")
    folder = build_models(root, ["tiny-demo"])
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(folder), "--kind", "embedding"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return folder


@pytest.fixture
def budgets():
    return {}


@pytest.fixture
def mlx_config(models_dir, budgets):
    return server_config(models_dir, default_keep_alive=-1, budgets=budgets)


@pytest.fixture
def no_eos(models_dir):
    return {str(eos_id(models_dir / "tiny-demo")): -100}


@pytest.fixture
def sdk(make_user, jp_http_port, jp_base_url):
    async def make(name: str):
        _, token = await make_user(name)
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


def _lines(no_eos, count, max_tokens=4, url="/v1/chat/completions"):
    for i in range(count):
        if url == "/v1/embeddings":
            body = {"model": EMBED, "input": f"text {i}"}
        else:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "logit_bias": no_eos,
            }
        yield {"custom_id": f"line-{i}", "method": "POST", "url": url, "body": body}


def _jsonl(lines) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def _wait(client, batch_id, done=("completed", "failed", "cancelled", "expired"), timeout=120):
    return await wait_until_async(
        lambda: client.batches.retrieve(batch_id),
        f"batch {batch_id} to be {' or '.join(done)}",
        timeout,
        interval=0.2,
        done=lambda batch: batch.status in done,
    )


async def _answers(client, file_id):
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_batch_answers_every_line_once_with_bad_lines_in_the_error_file(sdk, no_eos):
    bob = await sdk("bob")
    lines = list(_lines(no_eos, 4))
    lines[2]["body"]["temperature"] = 7  # refused by the route's own checks: a 400 in the error file
    upload = await bob.files.create(file=("requests.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(_jsonl(lines))

    batch = await bob.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "1"}
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "1"}
    batch = await _wait(bob, batch.id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 3, 1)

    output = await _answers(bob, batch.output_file_id)
    errors = await _answers(bob, batch.error_file_id)
    assert sorted(a["custom_id"] for a in output + errors) == [f"line-{i}" for i in range(4)]
    for answer in output:
        body = answer["response"]["body"]
        assert answer["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] == 4
    [bad] = errors
    assert bad["custom_id"] == "line-2" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"] == "temperature"

    listed = await bob.batches.list()
    assert [b.id for b in listed.data] == [batch.id]
    assert {f.id for f in (await bob.files.list()).data} >= {upload.id, batch.output_file_id}


async def test_embeddings_batches_and_upload_checks(sdk, no_eos):
    bob = await sdk("bob")
    with pytest.raises(openai.BadRequestError) as refused:
        await bob.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "a"}\nnot json\n')), purpose="batch")
    assert "line 1" in refused.value.message
    twice = _jsonl([*_lines(no_eos, 1), *_lines(no_eos, 1)])
    with pytest.raises(openai.BadRequestError) as refused:
        await bob.files.create(file=("twice.jsonl", io.BytesIO(twice)), purpose="batch")
    assert refused.value.code == "duplicate_custom_id"

    upload = await bob.files.create(
        file=("e.jsonl", io.BytesIO(_jsonl(_lines(no_eos, 3, url="/v1/embeddings")))), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError):  # the file's url decides the endpoint
        await bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = await bob.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = await _wait(bob, batch.id)
    output = await _answers(bob, batch.output_file_id)
    assert len(output) == 3 and all(len(a["response"]["body"]["data"][0]["embedding"]) > 0 for a in output)


async def test_another_users_files_and_batches_are_not_found(sdk, no_eos):
    bob, carol = await sdk("bob"), await sdk("carol")
    upload = await bob.files.create(file=("r.jsonl", io.BytesIO(_jsonl(_lines(no_eos, 1)))), purpose="batch")
    batch = await bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (
        carol.files.retrieve(upload.id),
        carol.files.content(upload.id),
        carol.files.delete(upload.id),
        carol.batches.retrieve(batch.id),
        carol.batches.cancel(batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    with pytest.raises(openai.BadRequestError):
        await carol.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (await carol.batches.list()).data == []
    await _wait(bob, batch.id)
    deleted = await bob.files.delete(upload.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await bob.files.retrieve(upload.id)


async def test_cancel_keeps_what_finished(sdk, no_eos):
    bob = await sdk("bob")
    upload = await bob.files.create(
        file=("long.jsonl", io.BytesIO(_jsonl(_lines(no_eos, 40, max_tokens=256)))), purpose="batch"
    )
    batch = await bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await _wait(bob, batch.id, done=("in_progress",))
    await wait_until_async(
        lambda: bob.batches.retrieve(batch.id),
        "a first line to complete",
        timeout=120,
        done=lambda batch: batch.request_counts.completed >= 1,
    )
    cancelled = await bob.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    batch = await _wait(bob, batch.id)
    assert batch.status == "cancelled"
    output = await _answers(bob, batch.output_file_id)
    assert 1 <= len(output) < 40 and batch.request_counts.completed == len(output)
    with pytest.raises(openai.BadRequestError):
        await bob.batches.cancel(batch.id)


@pytest.mark.parametrize("budgets", [{"users": {"bob": {"tokens_per_day": 30}}}])
async def test_a_batch_waits_while_its_owners_budget_is_spent(sdk, no_eos, mlx_app):
    class Clock:
        now = dt.datetime(2030, 6, 15, 12, tzinfo=dt.UTC).timestamp()

        def __call__(self):
            return self.now

    clock = mlx_app.budget_service.clock = Clock()
    bob = await sdk("bob")
    upload = await bob.files.create(file=("r.jsonl", io.BytesIO(_jsonl(_lines(no_eos, 20)))), purpose="batch")
    batch = await bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await wait_until_async(
        lambda: bob.batches.retrieve(batch.id),
        "a first line to complete",
        timeout=60,
        done=lambda batch: batch.request_counts.completed >= 1,
    )
    await asyncio.sleep(3)  # longer than the batch's budget re-check: it still waits
    paused = await bob.batches.retrieve(batch.id)
    assert paused.status == "in_progress" and paused.request_counts.completed < 20
    for _ in range(10):  # each new day renews the budget: one more wave of lines
        clock.now += 86400
        await asyncio.sleep(2.5)
        if (await bob.batches.retrieve(batch.id)).status == "completed":
            break
    batch = await _wait(bob, batch.id, timeout=30)
    assert batch.status == "completed" and batch.request_counts.completed == 20


async def test_interactive_requests_are_admitted_before_waiting_batch_lines():
    """One decoding slot: a batch line holds it, another batch line waits, then an interactive
    request arrives. When the slot frees, the interactive request gets it first."""
    limits = RequestLimits(max_requests_per_user=8, max_batch_size=1, max_queued_requests=8, batch_slots=1)
    order: list[str] = []
    release_first = asyncio.Event()

    async def run(name: str, priority: str, hold: asyncio.Event | None = None):
        async with limits.admit("bob", MODEL, priority):
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.ensure_future(run("batch-1", "batch", release_first))
    await asyncio.sleep(0)
    waiting_line = asyncio.ensure_future(run("batch-2", "batch"))
    await asyncio.sleep(0)
    interactive = asyncio.ensure_future(run("interactive", "interactive"))
    await asyncio.sleep(0)
    assert order == ["batch-1"]
    release_first.set()
    await asyncio.gather(first, waiting_line, interactive)
    assert order == ["batch-1", "interactive", "batch-2"]

    # Batch lines hold at most batch_slots of a model's slots, even when more are free.
    limits = RequestLimits(max_batch_size=4, batch_slots=2)
    held = asyncio.Event()
    lines = [asyncio.ensure_future(run(f"line-{i}", "batch", held)) for i in range(3)]
    order.clear()
    await asyncio.sleep(0.05)
    assert sorted(order) == ["line-0", "line-1"]
    await run("typing", "interactive")  # a free slot remains for people
    held.set()
    await asyncio.gather(*lines)


def test_a_batch_survives_a_server_restart(tmp_path, models_dir, no_eos):
    args = (
        f"--MLXManager.model_dirs={models_dir}",
        "--MLXManager.owner_username=owner",
        "--MLXManager.default_keep_alive=-1",
        "--MLXManager.max_batch_size=2",
    )
    lines = list(_lines(no_eos, 12, max_tokens=48))
    with jupyter_server(tmp_path, *args) as server:
        api = server.url + "mlx/v1/"
        upload = requests.post(
            api + "files",
            headers=server.headers,
            files={"file": ("r.jsonl", _jsonl(lines))},
            data={"purpose": "batch"},
            timeout=30,
        ).json()
        batch = requests.post(
            api + "batches",
            headers=server.headers,
            json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            timeout=30,
        ).json()
        wait_until(
            lambda: requests.get(api + f"batches/{batch['id']}", headers=server.headers, timeout=10).json(),
            "two lines to complete",
            timeout=120,
            interval=0.2,
            done=lambda batch: batch["request_counts"]["completed"] >= 2,
        )
        server.process.send_signal(signal.SIGKILL)  # no goodbye: the files are the record
        server.process.wait(timeout=30)
    with jupyter_server(tmp_path, *args) as server:
        api = server.url + "mlx/v1/"
        found = wait_until(
            lambda: requests.get(api + f"batches/{batch['id']}", headers=server.headers, timeout=10).json(),
            "the batch to complete after the restart",
            timeout=180,
            interval=0.3,
            done=lambda batch: batch["status"] == "completed",
        )
        output = requests.get(api + f"files/{found['output_file_id']}/content", headers=server.headers, timeout=30)
        ids = [json.loads(line)["custom_id"] for line in output.text.splitlines()]
        assert sorted(ids) == sorted(line["custom_id"] for line in lines)  # each exactly once
        assert found["request_counts"] == {"total": 12, "completed": 12, "failed": 0}


def test_kernel_map_in_the_background_and_usage(tmp_path, models_dir, no_eos):
    """The kernel client: `map(background=True)` hands back a batch at once and its results in
    input order; `usage()` and `budget()` read the same ledger."""
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.owner_username=owner")
    with jupyter_server(tmp_path, *args) as server:
        client = connect(server.url, server.token)
        prompts = [f"prompt {i}" for i in range(5)]
        job = client.map(MODEL, prompts, background=True, progress=False, max_tokens=3, temperature=0,
                         logit_bias=no_eos)  # fmt: skip
        assert isinstance(job, BatchJob) and job.status()["status"] in ("validating", "in_progress", "completed")
        results = client.batch(job.id).wait(timeout=120)  # found again by id, as after a kernel restart
        assert [r.usage["completion_tokens"] for r in results] == [3] * 5
        assert all(r.model == MODEL for r in results)

        rows = client.usage(group_by="model")
        assert [(r["key"], r["requests"], r["completion_tokens"]) for r in rows] == [(MODEL, 5, 15)]
        assert client.budget()["windows"]["tokens_per_day"]["limit"] is None
