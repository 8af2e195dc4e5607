"""Speculative decoding with a draft model (`POST mlx/api/pool/load {"draft_model"}`,
`c.MLXManager.draft_models = {id: draft id}`, a profile's `draft_model`).

Greedy output is the model's own, token for token, whether the draft agrees with it (a copy of
the model: every draft accepted) or not (a model of another size: most rejected), alone on the
direct path and when another request joins mid-answer. Through a server: the pool reports the
draft and its acceptance rate and counts its weights, `/metrics` the draft tokens; a draft that
cannot be (not local, another vocabulary, an embedding model) is a 400 naming `draft_model`
before anything is spawned; concurrent requests still batch while a draft is configured.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from models import build_models, eos_id
from servers import jupyter_server
from test_engine import Runner
from test_speculative import REPEATING, keeps_its_output_when_another_joins, speculative_status
from waiting import wait_until

PROMPTS = [REPEATING, "Once upon a time " * 12, "Tell me about the weather in Paris."]
MODEL = "local/demo"


def demo_model(folder: Path, name: str, *options: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(folder.parent / "cli-data"), "demo-model",
         "--dir", str(folder), "--name", name, *options],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """demo; same (a copy: a draft that always agrees); other (another size, the same
    tokenizer: a draft that mostly disagrees); tools (one token more: another vocabulary); embed."""
    folder = build_models(tmp_path_factory.mktemp("draft-models"), ["demo", "same", "fast-target"], tool_model="tools")
    demo_model(folder, "other", "--size", "bench")
    demo_model(folder, "embed", "--kind", "embedding")
    return folder


@pytest.fixture(scope="module")
def runners(models_dir):
    plain = Runner(models_dir / "demo", "--prompt-cache-bytes", "0")
    drafted = {
        name: Runner(models_dir / "demo", "--prompt-cache-bytes", "0", "--draft-model", str(models_dir / name))
        for name in ("same", "other")
    }
    yield plain, drafted
    for runner in (plain, *drafted.values()):
        runner.close()


@pytest.mark.parametrize("draft", ["same", "other"])
@pytest.mark.parametrize("eos_allowed", [True, False])
def test_greedy_output_is_the_models_own(runners, draft, eos_allowed):
    plain, drafted = runners
    speculating = drafted[draft]
    options = {"max_tokens": 60, **({"logit_bias": {}} if eos_allowed else {})}
    for i, prompt in enumerate(PROMPTS):
        expected, expected_events = plain.run(f"plain-{draft}-{eos_allowed}-{i}", prompt, **options)
        text, events = speculating.run(f"spec-{draft}-{eos_allowed}-{i}", prompt, **options)
        assert text == expected, (draft, prompt, text, expected)
        assert events[-1]["completion_tokens"] == expected_events[-1]["completion_tokens"]
        assert events[-1]["finish_reason"] == expected_events[-1]["finish_reason"]
    stats = speculating.engine_stats(until=lambda s: s["speculative_accepted"] + s["speculative_rejected"] > 0)
    assert stats["speculative"] == "draft_model", stats
    if draft == "same":  # a draft that is the model itself is always right
        assert stats["speculative_accepted"] > 0 and stats["speculative_rejected"] == 0, stats
    else:
        assert stats["speculative_rejected"] > 0, stats


def test_a_speculating_request_keeps_its_output_when_another_joins(runners):
    plain, drafted = runners
    keeps_its_output_when_another_joins(plain, drafted["other"], tokens=200)


def weights(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def test_a_load_with_a_draft_model_reports_it_counts_it_and_refuses_bad_ones(tmp_path, models_dir):
    no_eos = {str(eos_id(models_dir / "demo")): -100}
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1")
    with jupyter_server(tmp_path, *args) as server:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
            for draft, param, says in [
                ("local/missing", "draft_model", "not a model on this machine"),
                ("remote/vllm/qwen", "draft_model", "the id of a local text model"),
                ("local/tools", "draft_model", "does not share"),
                ("local/embed", "draft_model", "not a text model"),
            ]:
                reply = http.post("mlx/api/pool/load", json={"model": MODEL, "draft_model": draft})
                assert reply.status_code == 400, reply.text
                assert reply.json()["reason"] == "invalid_request_error" and reply.json()["param"] == param, reply.text
                assert says in reply.json()["message"], reply.text
            for body, param in [
                ({"speculative": "ngrams"}, "speculative"),
                ({"speculative": "prompt_lookup", "draft_model": "local/same"}, "speculative"),
            ]:
                reply = http.post("mlx/api/pool/load", json={"model": MODEL, **body})
                assert reply.status_code == 400 and reply.json()["param"] == param, reply.text
            assert http.get("mlx/api/pool").json()["models"] == []  # nothing was spawned for them

            loaded = http.post("mlx/api/pool/load", json={"model": MODEL, "draft_model": "local/same"})
            assert loaded.status_code == 200, loaded.text
            assert loaded.json()["draft_model"] == "local/same"
            assert loaded.json()["base_bytes"] >= 1.2 * (weights(models_dir / "demo") + weights(models_dir / "same"))
            again = http.post("mlx/api/pool/load", json={"model": MODEL, "draft_model": "local/other"})
            assert again.status_code == 409 and again.json()["reason"] == "model_loaded", again.text

            body = {"model": MODEL, "prompt": REPEATING, "max_tokens": 60, "temperature": 0, "logit_bias": no_eos}
            reply = http.post("mlx/v1/completions", json=body)
            assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 60, reply.text
            status = speculative_status(http, MODEL, lambda s: s["accepted_tokens"] > 0)
            assert status["mode"] == "draft_model" and status["draft_model"] == "local/same", status
            assert status["accepted_tokens"] > 0 and status["acceptance_rate"] == 1, status
            metrics = http.get("metrics").text
    assert f'mlx_manager_speculative_tokens_total{{model="{MODEL}",result="accepted"}}' in metrics, metrics[-2000:]


def test_configured_drafts_apply_and_concurrent_requests_still_batch(tmp_path, models_dir):
    no_eos = {str(eos_id(models_dir / "demo")): -100}
    profiles = "{'fast': {'model': 'local/fast-target', 'draft_model': 'local/other'}}"
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1",
            f"--MLXManager.draft_models={{'{MODEL}': 'local/same'}}", f"--MLXManager.profiles={profiles}")  # fmt: skip
    with jupyter_server(tmp_path, *args) as server:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:

            def complete(prompt: str, model: str = MODEL) -> httpx.Response:
                body = {"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0, "logit_bias": no_eos}
                return http.post("mlx/v1/completions", json=body)

            alone = complete(PROMPTS[1])
            assert alone.status_code == 200, alone.text
            with ThreadPoolExecutor(len(PROMPTS)) as threads:
                replies = list(threads.map(complete, PROMPTS))
            for reply in replies:
                assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 40, reply.text
            assert replies[1].json()["choices"][0]["text"] == alone.json()["choices"][0]["text"]
            status = speculative_status(http, MODEL, lambda s: s["accepted_tokens"] > 0)
            assert status["draft_model"] == "local/same" and status["accepted_tokens"] > 0, status

            assert complete("Hello", "fast").status_code == 200
            pool = {m["model"]: m for m in http.get("mlx/api/pool").json()["models"]}
            assert pool["local/fast-target"]["draft_model"] == "local/other", pool


def test_a_prompt_cache_hit_is_not_prefilled_again_by_the_draft_model(models_dir, runners, tmp_path):
    """A request that speculated stores its draft model's KV cache beside the model's: the same
    prompt again (a retried agent turn) starts decoding with neither model prefilling it, and a
    longer prompt on top of it (the next turn) prefills only what is new. The disk's copy (the
    model's cache alone) does not displace the memory's."""
    plain, _ = runners
    prompt = "Once upon a time there was a long prompt. " * 24
    expected, _ = plain.run("alone", prompt, max_tokens=24)
    disk = tmp_path / "prompt-cache"
    runner = Runner(
        models_dir / "demo", "--prefill-step-size", "16", "--draft-model", str(models_dir / "other"),
        "--prompt-cache-dir", str(disk), "--prompt-cache-disk-bytes", str(1 << 30), "--prompt-cache-min-tokens", "256",
    )  # fmt: skip
    try:

        def chunks_of(rid: str, text: str) -> tuple[list[dict], int]:
            before = runner.engine_stats()["prefill_chunks"]
            answer, events = runner.run(rid, text, max_tokens=24)
            if text == prompt:
                assert answer == expected, (rid, answer, expected)  # still the model's own greedy output
            return events, runner.engine_stats(until=lambda s: s["prefill_chunks"] >= before)["prefill_chunks"] - before

        events, first = chunks_of("first", prompt)
        prompt_tokens = events[-1]["prompt_tokens"]
        assert first >= 2 * (prompt_tokens // 16)  # the model, then the draft model, chunk by chunk
        wait_until(lambda: list(disk.glob("**/*.safetensors")), "the prompt's cache on disk")
        events, again = chunks_of("again", prompt)
        assert events[-1]["cached_tokens"] == prompt_tokens - 1 and again == 0
        events, longer = chunks_of("longer", prompt + expected + " And then? Tell me more about it.")
        assert events[-1]["cached_tokens"] >= prompt_tokens
        assert longer <= 2 * -(-(events[-1]["prompt_tokens"] - events[-1]["cached_tokens"]) // 16)
        stats = runner.engine_stats()
        assert stats["speculative_accepted"] + stats["speculative_rejected"] > 0, stats
    finally:
        runner.close()
