"""KV memory in the pool's accounting (SPEC "Limits"): live KV while a long prompt decodes,
the prompt cache after requests, and a budget kept by trimming prompt caches (`trim_cache`)
instead of refusing or evicting. No timing is asserted: figures come from `mlx/api/pool`."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest
from conftest import server_config
from models import build_models
from waiting import wait_until_async


@pytest.fixture(scope="session")
def memory_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("memory-models"), ["a", "b"])


@pytest.fixture
def mlx_config(memory_models):
    return server_config(memory_models, max_loaded_models=2, default_keep_alive=-1)


def _long_prompt(words: int = 500) -> str:
    return f"[{secrets.token_hex(4)}] " + "tell me more about notebooks " * (words // 4)


def _chat(memory_models, model: str, prompt: str, max_tokens: int) -> dict:
    eos = json.loads((memory_models / "a" / "config.json").read_text())["eos_token_id"]
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "logit_bias": {str(eos): -100}, "temperature": 0}  # fmt: skip


async def _model(api, name: str = "local/a") -> dict:
    for model in (await api("GET", "mlx/api/pool")).body["models"]:
        if model["model"] == name:
            return model
    raise AssertionError(f"{name} is not loaded")


async def _until(api, check, message: str, name: str = "local/a") -> dict:
    """`name`'s entry in mlx/api/pool once `check` holds."""
    return await wait_until_async(lambda: _model(api, name), f"{name}: {message}", interval=0.05, done=check)


def _accounted(model: dict) -> bool:
    return model["memory_bytes"] == model["base_bytes"] + model["kv_bytes"] + model["prompt_cache_bytes"]


async def test_live_kv_and_the_prompt_cache_are_counted(api, memory_models):
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/a"})).code == 200
    idle = await _until(api, lambda m: m["rss_bytes"] is not None, "its resident memory")
    assert idle["kv_bytes"] == 0 and idle["prompt_cache_bytes"] == 0 and _accounted(idle)

    chat = asyncio.ensure_future(
        api("POST", "mlx/v1/chat/completions", body=_chat(memory_models, "local/a", _long_prompt(), 1200))
    )
    decoding = await _until(api, lambda m: m["kv_bytes"] > 0 or chat.done(), "live KV (or the chat to end)")
    assert decoding["kv_bytes"] > 0, "the live KV cache of a decoding request shows in mlx/api/pool"
    assert decoding["memory_bytes"] >= decoding["base_bytes"] + decoding["kv_bytes"]
    status = (await api("GET", "mlx/api/pool")).body
    assert status["memory_used_bytes"] >= decoding["kv_bytes"]
    reply = await chat
    assert reply.code == 200, reply.body
    prompt_tokens = reply.body["usage"]["prompt_tokens"]
    assert prompt_tokens > 400

    done = await _until(api, lambda m: m["kv_bytes"] == 0 and m["prompt_cache_bytes"] > 0, "no live KV, a prompt cache")
    assert done["kv_bytes"] == 0, "no KV is live once the request is done"
    assert done["prompt_cache_bytes"] > 0, "the finished request's cache is kept in the prompt cache"
    assert _accounted(done)
    assert (await api("GET", "mlx/api/pool")).body["memory_used_bytes"] == done["memory_bytes"]


async def _fill_prompt_cache(api, memory_models, requests: int = 4) -> dict:
    for _ in range(requests):  # distinct long prompts: one prompt-cache entry each
        reply = await api("POST", "mlx/v1/chat/completions", body=_chat(memory_models, "local/a", _long_prompt(), 4))
        assert reply.code == 200, reply.body
    return await _until(api, lambda m: m["prompt_cache_bytes"] > 0 and m["kv_bytes"] == 0, "a prompt cache, no live KV")


async def test_a_small_budget_trims_the_prompt_cache(api, mlx_app, memory_models):
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/a"})).code == 200
    full = await _fill_prompt_cache(api, memory_models)
    cache = full["prompt_cache_bytes"]
    assert cache > 0 and _accounted(full)

    # The budget shrinks below what is used: the pool trims the cache (it does not unload).
    mlx_app.pool.max_memory_bytes = full["memory_bytes"] - cache // 2
    trimmed = await _until(
        api, lambda m: m["memory_bytes"] <= mlx_app.pool.max_memory_bytes, "memory within the budget"
    )
    assert trimmed["memory_bytes"] <= mlx_app.pool.max_memory_bytes
    assert trimmed["prompt_cache_bytes"] <= cache // 2 and trimmed["pid"] == full["pid"]
    assert trimmed["prompt_cache_limit_bytes"] <= cache // 2
    reply = await api("POST", "mlx/v1/chat/completions", body=_chat(memory_models, "local/a", "still there?", 4))
    assert reply.code == 200, reply.body
    model = await _until(api, lambda m: m["kv_bytes"] == 0, "no live KV")
    assert model["prompt_cache_bytes"] <= model["prompt_cache_limit_bytes"] <= cache // 2


async def test_a_load_trims_a_pinned_models_prompt_cache_instead_of_failing(api, mlx_app, memory_models):
    assert (await api("POST", "mlx/api/pool/load", body={"model": "local/a", "pin": True})).code == 200
    full = await _fill_prompt_cache(api, memory_models)
    cache = full["prompt_cache_bytes"]
    # Room for a's weights, b's and half of a's prompt cache: b fits only if a's cache gives way
    # (a is pinned, so evicting it is no way out). b's estimate is a's base: the same files.
    mlx_app.pool.max_memory_bytes = full["memory_bytes"] + full["base_bytes"] - cache // 2
    reply = await api("POST", "mlx/api/pool/load", body={"model": "local/b"})
    assert reply.code == 200, reply.body
    a = await _model(api, "local/a")
    assert a["pid"] == full["pid"] and a["pinned"], "a stayed loaded"
    assert a["prompt_cache_bytes"] <= cache // 2, "a's prompt cache was trimmed to make room"
    status = (await api("GET", "mlx/api/pool")).body
    assert status["memory_used_bytes"] <= mlx_app.pool.max_memory_bytes
