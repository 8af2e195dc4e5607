"""Workbench jobs through the real server: mlx-lm's tuner, loader and converter in real child
processes, on tiny demo models and data the tests write."""

from __future__ import annotations

import json
import math
import signal

import psutil
import pytest
import requests
from conftest import server_config
from models import build_models, eos_id
from servers import jupyter_server
from waiting import wait_until, wait_until_async

BASE = "local/tiny-demo"
SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("job-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def data(jp_root_dir):
    """A training set (one sentence, many times) and an evaluation set, under the Jupyter root."""
    (jp_root_dir / "train.jsonl").write_text("".join(json.dumps({"text": SENTENCE}) + "\n" for _ in range(24)))
    evaluation = [{"text": SENTENCE}] * 3 + [
        {"question": "the quick brown fox", "choices": ["jumps over the lazy dog", "reads a book"], "answer": 0},
        {"question": "what does the fox do", "choices": ["sleeps", "jumps"], "answer": "jumps"},
    ]
    (jp_root_dir / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in evaluation))
    return {"train": "train.jsonl", "eval": "eval.jsonl"}


async def _wait(api, job_id, auth="jupyter", timeout=240):
    reply = await wait_until_async(
        lambda: api("GET", f"mlx/api/jobs/{job_id}", auth=auth),
        f"job {job_id} to end",
        timeout,
        interval=0.3,
        done=lambda reply: reply.body["status"] in ("succeeded", "failed", "cancelled", "interrupted"),
    )
    return reply.body


async def _chat(api, model, eos):
    body = {"model": model, "messages": [{"role": "user", "content": "the quick"}], "max_tokens": 12,
            "temperature": 0, "logit_bias": {str(eos): -100}}  # fmt: skip
    reply = await api("POST", "mlx/v1/chat/completions", body=body)
    assert reply.code == 200, reply.body
    return reply.body["choices"][0]["message"]["content"]


async def test_finetune_evaluate_and_serve_an_adapter(api, data, models_dir):
    job = {"type": "finetune", "model": BASE, "data": data["train"], "name": "fox", "iters": 40,
           "batch_size": 4, "learning_rate": 0.01, "lora_rank": 8, "num_layers": 2, "val_fraction": 0.2}  # fmt: skip
    created = await api("POST", "mlx/api/jobs", body=job)
    assert created.code == 202 and created.body["status"] == "queued", created.body
    job = await _wait(api, created.body["id"])
    assert job["status"] == "succeeded", job
    curve = [p["train_loss"] for p in job["progress"]["curve"] if "train_loss" in p]
    assert len(curve) >= 5 and curve[-1] < curve[0] * 0.7  # the loss fell measurably
    assert any("val_loss" in p for p in job["progress"]["curve"])
    assert job["result"]["model"] == "adapter/fox"

    local = (await api("GET", "mlx/api/models/local")).body["models"]
    adapter = next(m for m in local if m["id"] == "adapter/fox")
    assert adapter["source"] == "adapter" and adapter["base_model"] == BASE and adapter["kind"] == "text"
    eos = eos_id(models_dir / "tiny-demo")
    assert await _chat(api, "adapter/fox", eos) != await _chat(api, BASE, eos)  # base plus adapter, served

    evaluation = await api(
        "POST", "mlx/api/jobs", body={"type": "evaluate", "models": [BASE, "adapter/fox"], "data": data["eval"]}
    )
    assert evaluation.code == 202, evaluation.body
    job = await _wait(api, evaluation.body["id"])
    assert job["status"] == "succeeded", job
    base, tuned = job["result"]["table"]
    assert (base["model"], tuned["model"]) == (BASE, "adapter/fox")
    assert all(math.isfinite(row["perplexity"]) and 0 <= row["accuracy"] <= 1 for row in (base, tuned))
    assert tuned["perplexity"] < base["perplexity"]  # lower on the text it was trained on

    deleted = await api("DELETE", "mlx/api/models/local/adapter/fox", params={"force": "1"})
    assert deleted.code == 200, deleted.body
    assert "adapter/fox" not in {m["id"] for m in (await api("GET", "mlx/api/models/local")).body["models"]}


async def test_convert_makes_a_smaller_4_bit_model_that_answers(api, models_dir):
    created = await api(
        "POST", "mlx/api/jobs",
        body={"type": "convert", "source": BASE, "name": "tiny-q4", "quantize": {"bits": 4, "group_size": 32}},
    )  # fmt: skip
    assert created.code == 202, created.body
    job = await _wait(api, created.body["id"])
    assert job["status"] == "succeeded", job
    local = {m["id"]: m for m in (await api("GET", "mlx/api/models/local")).body["models"]}
    assert local["local/tiny-q4"]["quantization"]["bits"] == 4
    assert local["local/tiny-q4"]["size_bytes"] < local[BASE]["size_bytes"]
    assert isinstance(await _chat(api, "local/tiny-q4", eos_id(models_dir / "tiny-demo")), str)

    again = await api("POST", "mlx/api/jobs", body={"type": "convert", "source": BASE, "name": "tiny-q4"})
    assert again.code == 400 and again.body["reason"] == "name_taken"


async def test_jobs_are_own_only_cancellable_and_checked(api, make_user, data):
    _, bob = await make_user("bob")
    _, carol = await make_user("carol")
    long = {"type": "finetune", "model": BASE, "data": data["train"], "name": "long", "iters": 100000,
            "batch_size": 4, "num_layers": 2}  # fmt: skip
    created = await api("POST", "mlx/api/jobs", auth=bob, body=long)
    assert created.code == 202, created.body
    job_id = created.body["id"]
    assert (await api("GET", f"mlx/api/jobs/{job_id}", auth=carol)).code == 404
    assert (await api("DELETE", f"mlx/api/jobs/{job_id}", auth=carol)).code == 404
    assert (await api("GET", "mlx/api/jobs", auth=carol)).body["jobs"] == []
    assert [j["id"] for j in (await api("GET", "mlx/api/jobs")).body["jobs"]] == [job_id]  # the admin sees all

    await wait_until_async(
        lambda: api("GET", f"mlx/api/jobs/{job_id}", auth=bob),
        "a first training iteration",
        timeout=120,
        interval=0.3,
        done=lambda reply: reply.body["progress"].get("iteration") is not None,
    )
    pool = (await api("GET", "mlx/api/pool")).body
    assert [j["job"] for j in pool["jobs"]] == [job_id] and pool["jobs"][0]["memory_bytes"] > 0
    workers = [p for p in psutil.Process().children(recursive=True) if "jobs.worker" in " ".join(p.cmdline())]
    assert len(workers) == 1

    cancelled = await api("DELETE", f"mlx/api/jobs/{job_id}", auth=bob)
    assert cancelled.body["status"] == "cancelled"
    workers[0].wait(timeout=30)  # its process is gone
    assert (await api("GET", "mlx/api/pool")).body["jobs"] == []

    for bad, reason in (
        ({"type": "train"}, "invalid_job"),
        ({**long, "data": "../outside.jsonl"}, "invalid_data"),
        ({**long, "data": "/etc/passwd"}, "invalid_data"),
        ({**long, "name": "bad name"}, "invalid_job"),
        ({**long, "method": "magic"}, "invalid_job"),
        ({**long, "model": "local/nope"}, "model_not_found"),
        ({"type": "evaluate", "models": [BASE], "data": data["eval"], "metrics": ["bleu"]}, "invalid_job"),
    ):
        reply = await api("POST", "mlx/api/jobs", auth=bob, body=bad)
        assert reply.code == 400 and reply.body["reason"] == reason, (bad, reply.body)


def test_a_running_job_survives_a_restart_as_interrupted(tmp_path, models_dir):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": SENTENCE}) + "\n" for _ in range(16)))
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.owner_username=owner")
    job = {"type": "finetune", "model": BASE, "data": "train.jsonl", "name": "cut", "iters": 100000,
           "batch_size": 4, "num_layers": 2, "save_every": 5}  # fmt: skip
    with jupyter_server(tmp_path, *args) as server:
        created = requests.post(server.url + "mlx/api/jobs", json=job, headers=server.headers, timeout=30).json()
        wait_until(
            lambda: requests.get(
                server.url + f"mlx/api/jobs/{created['id']}", headers=server.headers, timeout=10
            ).json(),
            "ten training iterations",
            timeout=120,
            interval=0.3,
            done=lambda job: job["progress"].get("iteration", 0) >= 10,
        )
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
    with jupyter_server(tmp_path, *args) as server:
        found = requests.get(server.url + f"mlx/api/jobs/{created['id']}", headers=server.headers, timeout=10).json()
        assert found["status"] == "interrupted" and "stopped" in found["error"]
        assert found["result"]["checkpoints"]  # the checkpoints it had saved are kept


async def test_a_finetune_reads_a_file_uploaded_for_it(api, make_user, jp_http_port, jp_base_url):
    """`data` may be a file uploaded to mlx/v1/files with purpose fine-tune — the uploader's own."""
    import io

    import openai

    _, bob = await make_user("bob")
    _, carol = await make_user("carol")
    sdk = openai.AsyncOpenAI(base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=bob, max_retries=0)
    rows = "".join(json.dumps({"prompt": "the quick brown", "completion": " fox"}) + "\n" for _ in range(8))
    upload = await sdk.files.create(file=("train.jsonl", io.BytesIO(rows.encode())), purpose="fine-tune")
    job = {"type": "finetune", "model": BASE, "data": upload.id, "name": "uploaded", "iters": 5, "batch_size": 4,
           "num_layers": 2, "val_fraction": 0}  # fmt: skip
    refused = await api("POST", "mlx/api/jobs", auth=carol, body=job)
    assert refused.code == 400 and refused.body["reason"] == "invalid_data"  # not carol's file
    created = await api("POST", "mlx/api/jobs", auth=bob, body=job)
    assert created.code == 202, created.body
    done = await _wait(api, created.body["id"], auth=bob)
    assert done["status"] == "succeeded" and done["result"]["model"] == "adapter/uploaded", done
