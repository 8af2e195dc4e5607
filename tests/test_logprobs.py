"""Token log-probabilities (`logprobs` / `top_logprobs`) with the unmodified `openai` SDK.

Chat completions carry OpenAI's `choices[0].logprobs.content` (streamed per chunk), legacy
completions `{tokens, token_logprobs, top_logprobs, text_offset}`; both from the distribution
the runner samples from, on the direct path and in a batch.
"""

from __future__ import annotations

import asyncio
import math

import openai
import pytest
from conftest import server_config
from models import build_models, eos_id

MODEL = "local/tiny-demo"
MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("logprobs-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


@pytest.fixture
def no_eos(models_dir):
    return {str(eos_id(models_dir / "tiny-demo")): -100}


def _check_entry(entry, top: int) -> None:
    assert entry.logprob <= 0 and entry.bytes and isinstance(entry.token, str)
    assert len(entry.top_logprobs) == top
    values = [t.logprob for t in entry.top_logprobs]
    assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    assert sum(math.exp(v) for v in values) <= 1 + 1e-5


async def test_chat_logprobs_streamed_and_not_with_three_alternatives(sdk, no_eos):
    client = await sdk()
    params = dict(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=5, logit_bias=no_eos)
    reply = await client.chat.completions.create(**params, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 8
    for entry in content:
        _check_entry(entry, 3)

    chunks = [c async for c in await client.chat.completions.create(
        **params, logprobs=True, top_logprobs=3, stream=True, stream_options={"include_usage": True}
    )]  # fmt: skip
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]  # same seed, same tokens
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)
    with_text = [c.choices[0] for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c.logprobs and c.logprobs.content for c in with_text)  # each text chunk carries its tokens

    # Greedy: the chosen token is the most likely one; without top_logprobs, no alternatives.
    greedy = await client.chat.completions.create(**{**params, "temperature": 0}, logprobs=True, top_logprobs=1)
    for entry in greedy.choices[0].logprobs.content:
        assert entry.token == entry.top_logprobs[0].token and entry.logprob == pytest.approx(
            entry.top_logprobs[0].logprob
        )
    plain = await client.chat.completions.create(**params, logprobs=True)
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)
    assert (await client.chat.completions.create(**params)).choices[0].logprobs is None


async def test_logprobs_in_a_batch_match_the_request_alone(sdk, no_eos):
    client = await sdk()
    params = dict(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logit_bias=no_eos, logprobs=True)
    alone = await client.chat.completions.create(**params, top_logprobs=2)
    batch = await asyncio.gather(
        *(client.chat.completions.create(**params, top_logprobs=2) for _ in range(3)),
        client.chat.completions.create(**{**params, "logprobs": False}, max_completion_tokens=6),
    )
    reference = [(e.token, round(e.logprob, 3)) for e in alone.choices[0].logprobs.content]
    for reply in batch[:3]:
        assert [(e.token, round(e.logprob, 3)) for e in reply.choices[0].logprobs.content] == reference
    assert batch[3].choices[0].logprobs is None


async def test_legacy_completions_logprobs(sdk, no_eos):
    client = await sdk()
    params = dict(model=MODEL, prompt="Hello", max_tokens=6, temperature=0, logit_bias=no_eos, logprobs=2)
    reply = await client.completions.create(**params)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert all(v <= 0 for v in logprobs.token_logprobs)
    for token, value, tops in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert tops[token] == pytest.approx(value) and len(tops) <= 3  # the chosen token is among them
        assert max(tops.values()) == pytest.approx(value)  # greedy
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)

    chunks = [c async for c in await client.completions.create(**params, stream=True)]
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert streamed == logprobs.tokens and offsets == logprobs.text_offset


async def test_logprobs_out_of_range_are_400_naming_the_field(sdk):
    client = await sdk()
    chat = dict(model=MODEL, messages=MESSAGES, max_tokens=2)
    for extra, param in (
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs: true
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(**chat, **extra)
        assert caught.value.param == param, extra
    with pytest.raises(openai.BadRequestError) as caught:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=21)
    assert caught.value.param == "logprobs"


async def test_responses_logprobs_when_included(sdk, no_eos):
    client = await sdk()
    params = dict(model=MODEL, input="Hello", max_output_tokens=6, temperature=0, extra_body={"logit_bias": no_eos})
    response = await client.responses.create(**params, top_logprobs=2, include=["message.output_text.logprobs"])
    logprobs = response.output[0].content[0].logprobs
    assert len(logprobs) == 6 and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in logprobs)
    async with client.responses.stream(**params, top_logprobs=2, include=["message.output_text.logprobs"]) as stream:
        deltas = [e for e in [e async for e in stream] if e.type == "response.output_text.delta"]
    assert [e.token for d in deltas for e in d.logprobs] == [e.token for e in logprobs]
    plain = await client.responses.create(**params, top_logprobs=2)  # OpenAI: only with the include
    assert plain.output[0].content[0].logprobs == []
