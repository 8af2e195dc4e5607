"""The prompt cache through the HTTP API: usage.prompt_tokens_details.cached_tokens and the audit."""

from __future__ import annotations

import asyncio

import pytest
from conftest import server_config
from models import build_models, eos_id

SYSTEM = " ".join(f"Rule {i}: answer briefly, cite the notebook cell, and keep numbers exact." for i in range(20))


@pytest.fixture(scope="session")
def cache_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("cache-models"), ["warm", "cold"])


@pytest.fixture
def prompt_cache_gb():
    return 0.25


@pytest.fixture
def mlx_config(cache_models, prompt_cache_gb):
    return server_config(cache_models, default_keep_alive=-1, prompt_cache_gb=prompt_cache_gb)


async def _chat(api, model, question, eos, **options):
    body = {
        "model": f"local/{model}", "max_tokens": 16, "temperature": 0, "logit_bias": {str(eos): -100},
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}], **options,
    }  # fmt: skip
    reply = await api("POST", "mlx/v1/chat/completions", body=body)
    assert reply.code == 200, reply.body
    return reply.body["choices"][0]["message"]["content"], reply.body["usage"]


async def test_a_shared_system_prompt_is_served_from_the_cache(api, cache_models):
    eos = eos_id(cache_models / "warm")
    text, usage = await _chat(api, "warm", "What does cell 3 print?", eos)
    assert usage["prompt_tokens"] > 800 and usage["prompt_tokens_details"]["cached_tokens"] == 0

    text, usage = await _chat(api, "warm", "And cell 4?", eos)
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached > 800, usage
    assert cached < usage["prompt_tokens"]
    cold_text, cold_usage = await _chat(api, "cold", "And cell 4?", eos)  # another runner, nothing cached
    assert cold_usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert text == cold_text, "the cached prefix changed the greedy output"

    # Streaming and concurrent requests get hits too, and seeded sampling is unchanged by them.
    seeded = {"temperature": 1.0, "seed": 5}
    warm = await asyncio.gather(*(_chat(api, "warm", f"Question {i}?", eos, **seeded) for i in range(4)))
    cold = [await _chat(api, "cold", f"Question {i}?", eos, **seeded) for i in range(4)]
    assert all(u["prompt_tokens_details"]["cached_tokens"] > 800 for _, u in warm)
    assert [t for t, _ in warm] == [t for t, _ in cold]

    records = (await api("GET", "mlx/api/audit", params={"model": "local/warm", "limit": "100"})).body["records"]
    chats = [r for r in records if r["action"] == "chat.completions"]
    assert len(chats) == 6 and sum(1 for r in chats if r["cached_tokens"] > 800) == 5


@pytest.mark.parametrize("prompt_cache_gb", [0])
async def test_prompt_cache_gb_0_disables_it(api, cache_models):
    eos = eos_id(cache_models / "warm")
    for question in ("One?", "Two?"):
        _, usage = await _chat(api, "warm", question, eos)
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
