"""Prompt-lookup speculative decoding (`c.MLXManager.draft_models = {id: "prompt_lookup"}`, or
`speculative: "prompt_lookup"` in one request's body).

Greedy output is plain decoding's, token for token: alone on the direct path (with and without
logit_bias, on prompts whose n-grams repeat, so drafts are accepted and rejected), and when
another request joins mid-answer (it migrates into the batch, which does not speculate, and
comes back). Through a server: the pool status reports the acceptance rate, and `/metrics` the
draft tokens by result.
"""

from __future__ import annotations

import httpx
import pytest
from models import build_models, eos_id
from servers import jupyter_server
from test_engine import Runner
from waiting import wait_until

REPEATING = "def add(a, b):\n    return a + b\n\n" * 6 + "def add(a, b):\n"
PROMPTS = [REPEATING, "Once upon a time " * 12, "Tell me about the weather in Paris."]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("speculative-models"), ["demo"])


@pytest.fixture(scope="module")
def runners(models_dir):
    plain = Runner(models_dir / "demo", "--prompt-cache-bytes", "0")
    speculating = Runner(models_dir / "demo", "--prompt-cache-bytes", "0", "--speculative", "prompt_lookup")
    yield plain, speculating
    plain.close()
    speculating.close()


@pytest.mark.parametrize("eos_allowed", [True, False])
def test_greedy_output_is_plain_decodings(runners, eos_allowed):
    plain, speculating = runners
    options = {"max_tokens": 120, **({"logit_bias": {}} if eos_allowed else {})}
    for i, prompt in enumerate(PROMPTS):
        expected, expected_events = plain.run(f"plain-{eos_allowed}-{i}", prompt, **options)
        text, events = speculating.run(f"spec-{eos_allowed}-{i}", prompt, **options)
        assert text == expected, (prompt, text, expected)
        assert events[-1]["completion_tokens"] == expected_events[-1]["completion_tokens"]
        assert events[-1]["finish_reason"] == expected_events[-1]["finish_reason"]
    stats = speculating.engine_stats(until=lambda s: s["speculative_accepted"] > 0)
    assert stats["speculative_accepted"] > 0 and stats["speculative_rejected"] > 0, stats


def test_a_request_may_ask_for_prompt_lookup_on_a_runner_loaded_without_it(runners):
    """`speculative: "prompt_lookup"` in one request: that request speculates (drafts are counted),
    its greedy output is still plain decoding's, and requests that do not ask do not speculate."""
    plain, _ = runners
    expected, _ = plain.run("without", REPEATING, max_tokens=80)
    before = plain.engine_stats()
    assert before["speculative_accepted"] == before["speculative_rejected"] == 0  # nothing asked for it yet
    text, _ = plain.run("asks", REPEATING, max_tokens=80, speculative="prompt_lookup")
    assert text == expected
    after = plain.engine_stats(until=lambda s: s["speculative_accepted"] > 0)
    assert after["speculative_accepted"] > 0
    assert "speculative" not in after  # the runner itself still does not speculate


def test_a_speculating_request_keeps_its_output_when_another_joins(runners):
    keeps_its_output_when_another_joins(*runners, tokens=1000)  # outlasts the short request


def keeps_its_output_when_another_joins(plain, speculating, tokens: int) -> None:
    """A request speculating on the direct path migrates into the batch when another arrives, and its
    text is still plain greedy decoding's."""
    expected, _ = plain.run("alone", REPEATING, max_tokens=tokens)
    before = speculating.engine_stats()
    speculating.submit("long", REPEATING, max_tokens=tokens)
    first = [speculating.next_event("long"), speculating.next_event("long")]
    assert [e["ev"] for e in first] == ["started", "text"]  # decoding (speculating) on the direct path
    _, short_events = speculating.run("short", "Hi", max_tokens=10)
    assert short_events[-1]["completion_tokens"] == 10
    text, events = speculating.collect("long")
    assert "".join(e["text"] for e in first[1:]) + text == expected
    assert events[-1]["completion_tokens"] == tokens
    after = speculating.engine_stats(until=lambda s: s["migrations"] > before["migrations"])
    assert after["migrations"] > before["migrations"]


def speculative_status(http: httpx.Client, model: str, until) -> dict:
    """The model's `speculative` entry in the pool once `until` holds (heartbeats carry the
    runner's counters)."""
    return wait_until(
        lambda: next(m for m in http.get("mlx/api/pool").json()["models"] if m["model"] == model)["speculative"],
        f"{model}'s speculative counters",
        done=lambda status: status and until(status),
    )


def test_the_pool_reports_the_acceptance_rate_and_metrics_count_drafts(tmp_path, models_dir):
    model = "local/demo"
    no_eos = {str(eos_id(models_dir / "demo")): -100}
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1",
            f"--MLXManager.draft_models={{'{model}': 'prompt_lookup'}}")  # fmt: skip
    with jupyter_server(tmp_path, *args) as server:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
            body = {"model": model, "prompt": REPEATING, "max_tokens": 80, "temperature": 0, "logit_bias": no_eos}
            assert http.post("mlx/v1/completions", json=body).status_code == 200
            status = speculative_status(http, model, lambda s: s["accepted_tokens"] > 0)
            assert status["mode"] == "prompt_lookup" and status["accepted_tokens"] > 0, status
            assert 0 < status["acceptance_rate"] <= 1, status
            metrics = http.get("metrics").text
    assert f'mlx_manager_speculative_tokens_total{{model="{model}",result="accepted"}}' in metrics, metrics[-2000:]


def test_a_request_asks_for_speculation_through_every_protocol(tmp_path, models_dir):
    """A server loaded without speculation: chat completions, Messages and Responses take
    `speculative: "prompt_lookup"` (the SDKs' extra_body); the answer is the one without it, the
    pool then reports the drafts; any other value is a 400 naming the field."""
    model = "local/demo"
    no_eos = {str(eos_id(models_dir / "demo")): -100}
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1")
    chat = {"model": model, "messages": [{"role": "user", "content": REPEATING}], "max_tokens": 40,
            "temperature": 0, "logit_bias": no_eos}  # fmt: skip
    with jupyter_server(tmp_path, *args) as server:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
            plain = http.post("mlx/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
            assert http.get("mlx/api/pool").json()["models"][0]["speculative"] is None
            asked = http.post("mlx/v1/chat/completions", json={**chat, "speculative": "prompt_lookup"})
            assert asked.status_code == 200 and asked.json()["choices"][0]["message"]["content"] == plain
            messages = {"model": model, "max_tokens": 8, "messages": chat["messages"], "temperature": 0,
                        "speculative": "prompt_lookup"}  # fmt: skip
            assert http.post("mlx/v1/messages", json=messages).status_code == 200
            responses = {"model": model, "input": REPEATING, "max_output_tokens": 8, "temperature": 0,
                         "speculative": "prompt_lookup"}  # fmt: skip
            assert http.post("mlx/v1/responses", json=responses).status_code == 200
            status = speculative_status(http, model, lambda s: s["accepted_tokens"] > 0)
            assert status["mode"] == "prompt_lookup" and status["draft_model"] is None, status
            assert status["accepted_tokens"] > 0, status
            for path, body in (("mlx/v1/chat/completions", chat), ("mlx/v1/messages", messages),
                               ("mlx/v1/responses", responses)):  # fmt: skip
                refused = http.post(path, json={**body, "speculative": "draft_model"})
                assert refused.status_code == 400 and "speculative" in refused.text, (path, refused.text)
