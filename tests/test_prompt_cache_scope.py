"""Who may reuse a cached prompt prefix (`c.MLXManager.prompt_cache_scope`), seen through
`usage.prompt_tokens_details.cached_tokens` of real requests by real users."""

from __future__ import annotations

import pytest
from conftest import server_config
from models import build_models, eos_id

SYSTEM = " ".join(f"Rule {i}: answer briefly, cite the notebook cell, and keep numbers exact." for i in range(20))
MODEL = "scoped"


@pytest.fixture(scope="session")
def scope_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("scope-models"), [MODEL])


@pytest.fixture
def prompt_cache_scope():
    return "user"


@pytest.fixture
def mlx_config(scope_models, prompt_cache_scope):
    return server_config(
        scope_models, default_keep_alive=-1, prompt_cache_gb=0.25, prompt_cache_scope=prompt_cache_scope
    )


async def _cached(api, token, eos, question, **options) -> int:
    """The cached prompt tokens of one greedy chat (the shared system prompt, then `question`)."""
    body = {
        "model": f"local/{MODEL}", "max_tokens": 4, "temperature": 0, "logit_bias": {str(eos): -100},
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}], **options,
    }  # fmt: skip
    reply = await api("POST", "mlx/v1/chat/completions", auth=token, body=body)
    assert reply.code == 200, reply.body
    usage = reply.body["usage"]
    assert usage["prompt_tokens"] > 800, usage
    return usage["prompt_tokens_details"]["cached_tokens"]


async def test_a_users_cached_prefix_is_reused_by_that_user_only(api, make_user, scope_models):
    eos = eos_id(scope_models / MODEL)
    _, bob = await make_user("bob")
    _, carol = await make_user("carol")
    assert await _cached(api, bob, eos, "What does cell 3 print?") == 0
    assert await _cached(api, bob, eos, "What does cell 3 print?") > 800  # bob's repeat: from his cache
    # carol's identical prompt computes everything, whatever she claims to share with bob
    assert await _cached(api, carol, eos, "What does cell 3 print?", prompt_cache_key="bob-and-carol") == 0
    assert await _cached(api, carol, eos, "And cell 4?") > 800  # her own prefix is hers to reuse
    assert await _cached(api, "jupyter", eos, "What does cell 3 print?", user="bob") == 0  # the owner is another user
    assert await _cached(api, bob, eos, "And cell 5?", prompt_cache_key="bob-and-carol") > 800


@pytest.mark.parametrize("prompt_cache_scope", ["shared"])
async def test_a_shared_scope_reuses_a_prefix_across_users(api, make_user, scope_models):
    eos = eos_id(scope_models / MODEL)
    _, bob = await make_user("bob")
    _, carol = await make_user("carol")
    assert await _cached(api, bob, eos, "What does cell 3 print?") == 0
    assert await _cached(api, carol, eos, "What does cell 3 print?") > 800
    assert await _cached(api, "jupyter", eos, "And cell 4?") > 800
