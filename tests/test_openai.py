"""The OpenAI-compatible API with the unmodified `openai` SDK, real runners and real MLX."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import openai
import pytest
from conftest import server_config
from models import build_models, eos_id
from waiting import wait_until_async

MODEL = "local/tiny-demo"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("openai-models"), ["tiny-demo"], tool_model="tool-demo")


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1, max_body_mb=4, max_images_per_request=0)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    """`client = await sdk()`: an unmodified AsyncOpenAI client with a fresh API token."""

    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


@pytest.fixture
def no_eos(models_dir):
    """logit_bias that suppresses EOS, for fixed-length output."""
    return {str(eos_id(models_dir / "tiny-demo")): -100}


async def test_models_and_chat_with_usage(sdk, no_eos):
    client = await sdk()
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]

    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=12, temperature=0, logit_bias=no_eos
    )
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12

    chunks, usage = [], None
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=12, temperature=0,
        logit_bias=no_eos, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            chunks.append(chunk.choices[0])
    text = "".join(c.delta.content or "" for c in chunks)
    assert chunks[-1].finish_reason == "length"
    assert usage.completion_tokens == 12 and usage.prompt_tokens == reply.usage.prompt_tokens
    assert text == reply.choices[0].message.content, "greedy output must not depend on streaming"


async def test_completions_stream_and_not(sdk, no_eos):
    client = await sdk()
    reply = await client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=8, temperature=0, logit_bias=no_eos
    )
    assert reply.object == "text_completion" and reply.usage.completion_tokens == 8
    pieces = [
        c
        async for c in await client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=8, temperature=0, logit_bias=no_eos, stream=True
        )
    ]
    assert "".join(p.choices[0].text for p in pieces if p.choices) == reply.choices[0].text


async def test_stop_cuts_at_first_occurrence_only(sdk, no_eos):
    client = await sdk()
    # Sampling with a seed: varied but repeatable text (the random model's greedy output is one repeated token).
    params = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me"}],
        max_tokens=40,
        temperature=1.0,
        seed=7,
        logit_bias=no_eos,
    )
    full = (await client.chat.completions.create(**params)).choices[0].message.content
    # Pick a stop string from the middle of the greedy output.
    stop = next(
        (
            full[i : i + 2]
            for i in range(5, len(full) - 2)
            if full[i : i + 2].strip() and full.find(full[i : i + 2]) == i
        ),
        None,
    )
    assert stop, f"no usable stop string in {full!r}"
    reply = await client.chat.completions.create(**params, stop=[stop])
    assert reply.choices[0].message.content == full[: full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"


async def test_concurrent_requests_share_one_runner(sdk, no_eos, api):
    client = await sdk()

    async def one(i):
        return await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Request {i}"}],
            max_tokens=10,
            temperature=0,
            logit_bias=no_eos,
        )

    replies = await asyncio.gather(*(one(i) for i in range(6)))
    assert all(r.usage.completion_tokens == 10 for r in replies)
    pool = (await api("GET", "mlx/api/pool")).body
    assert [m["model"] for m in pool["models"]] == [MODEL]
    assert pool["models"][0]["requests"] == 6


async def test_disconnect_mid_stream_frees_the_runner(sdk, no_eos, api):
    client = await sdk()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "long"}],
        max_tokens=4000,
        temperature=0,
        logit_bias=no_eos,
        stream=True,
    )
    count = 0
    async for _ in stream:
        count += 1
        if count == 3:
            break
    await stream.close()
    await wait_until_async(
        lambda: api("GET", "mlx/api/pool"),
        "the closed stream to leave the pool's in-flight count",
        timeout=15,
        done=lambda pool: pool.body["models"][0]["in_flight"] == 0,
    )
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "next"}], max_tokens=5, logit_bias=no_eos
    )
    assert reply.usage.completion_tokens == 5
    records = (await api("GET", "mlx/api/audit", params={"status": "cancelled"})).body["records"]
    (cancelled,) = [r for r in records if r["action"] == "chat.completions"]
    assert cancelled["completion_tokens"] >= 2, "a cancelled request records the tokens it used"


async def test_killed_runner_ends_the_stream_and_the_server_recovers(sdk, no_eos, api):
    client = await sdk()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "long"}],
        max_tokens=4000,
        temperature=0,
        logit_bias=no_eos,
        stream=True,
    )
    pid = None
    with pytest.raises(openai.APIError):
        async for _ in stream:
            if pid is None:
                pid = (await api("GET", "mlx/api/pool")).body["models"][0]["pid"]
                os.kill(pid, signal.SIGKILL)
    await wait_until_async(
        lambda: api("GET", "mlx/api/pool"),
        "the dead runner to leave the pool",
        timeout=15,
        interval=0.05,
        done=lambda pool: pool.body["models"] == [],
    )
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=4, logit_bias=no_eos
    )
    assert reply.usage.completion_tokens == 4
    assert (await api("GET", "mlx/api/pool")).body["models"][0]["pid"] != pid


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


async def test_tool_calls_through_the_chat_template_and_parser(sdk):
    client = await sdk()
    params = dict(
        model="local/tool-demo",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        temperature=0,
        max_tokens=20,
    )
    reply = await client.chat.completions.create(**params, tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    deltas = [
        c.choices[0]
        async for c in await client.chat.completions.create(**params, tools=[WEATHER_TOOL], stream=True)
        if c.choices
    ]
    streamed = [tc for d in deltas if d.delta.tool_calls for tc in d.delta.tool_calls]
    assert [(tc.index, tc.function.name) for tc in streamed] == [(0, "get_weather")]
    assert deltas[-1].finish_reason == "tool_calls"
    assert not "".join(d.delta.content or "" for d in deltas)

    # The tool's answer goes back through the chat template; without tools the text is plain.
    follow_up = params["messages"] + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ]
    reply = await client.chat.completions.create(**{**params, "messages": follow_up})
    assert reply.choices[0].message.tool_calls is None
    assert "get_weather" in reply.choices[0].message.content


BAD_CHAT = [
    ({"model": "local/nope", "messages": [{"role": "user", "content": "x"}]}, 404),
    ({"model": "someorg/not-downloaded", "messages": [{"role": "user", "content": "x"}]}, 404),
    ({"model": "../etc/passwd", "messages": [{"role": "user", "content": "x"}]}, 400),
    ({"messages": [{"role": "user", "content": "x"}]}, 400),
    ({"model": MODEL}, 400),
    ({"model": MODEL, "messages": []}, 400),
    ({"model": MODEL, "messages": "hello"}, 400),
    ({"model": MODEL, "messages": [{"content": "x"}]}, 400),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ({"model": MODEL, "messages": [{"role": "user"}]}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**12}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": "high"}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": 7}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"x": 1}}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 1}}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"²": 1}}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "keep_alive": 1e300}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 3}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": 1.5}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 20000}]}, 400),  # longer than the context
]


async def test_bad_requests_are_4xx_with_the_openai_envelope(api):
    for body, expected in BAD_CHAT:
        reply = await api("POST", "mlx/v1/chat/completions", body=body)
        assert reply.code == expected, (body, reply.code, reply.body)
        assert set(reply.body["error"]) == {"message", "type", "param", "code"}, reply.body
        assert reply.headers["X-Request-ID"]
    raw = [
        ("{not json", "application/json", 400),
        ("[]", "application/json", 400),
        ('{"model": "x"}', "text/plain", 415),
        ('{"model": "' + "x" * (5 * 1024 * 1024) + '"}', "application/json", 413),
    ]
    raw.append(
        (
            '{"model": "local/tiny-demo", "messages": [{"role": "user", "content": "x"}], "keep_alive": NaN}',
            "application/json",
            400,
        )
    )
    for body, content_type, expected in raw:
        reply = await api("POST", "mlx/v1/chat/completions", raw_body=body, headers={"Content-Type": content_type})
        assert reply.code == expected and "error" in reply.body, (body[:30], reply.code)
    for body in (
        {"model": MODEL},
        {"model": MODEL, "prompt": ""},
        {"model": MODEL, "prompt": [-1]},
        {"model": MODEL, "prompt": "x", "max_tokens": 1.5},
    ):
        reply = await api("POST", "mlx/v1/completions", body=body)
        assert reply.code == 400 and "error" in reply.body, body
    reply = await api("POST", "mlx/v1/chat/completions", auth=None, body=BAD_CHAT[0][0])
    assert reply.code == 401 and reply.body["error"]["type"] == "authentication_error"


async def test_chat_completions_parse_returns_a_validated_model_from_a_random_model(sdk):
    """The SDK's strict json_schema is enforced by the runner's grammar: even random weights
    give JSON that parses into the Pydantic model (bounded fields, as NOTES advises)."""
    import pydantic

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=12)
        population: int = pydantic.Field(ge=0, le=999)

    client = await sdk()
    for seed in (1, 2, 3):
        reply = await client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "A city"}], response_format=City,
            max_tokens=200, temperature=1.0, seed=seed,
        )  # fmt: skip
        city = reply.choices[0].message.parsed
        assert isinstance(city, City) and len(city.name) <= 12 and 0 <= city.population <= 999


async def test_top_k_min_p_and_penalties_change_sampling_as_asked(sdk, no_eos):
    client = await sdk()
    params = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me"}], max_tokens=24, logit_bias=no_eos)
    greedy = (await client.chat.completions.create(**params, temperature=0)).choices[0].message.content
    # top_k=1 (and a min_p of 1.0) leave only the most likely token: sampling becomes greedy.
    for extra in ({"top_k": 1}, {"min_p": 0.999}):
        sampled = await client.chat.completions.create(**params, temperature=1.5, seed=3, extra_body=extra)
        assert sampled.choices[0].message.content == greedy, extra
    # The random model's greedy output repeats itself; penalties on repeated tokens break that.
    plain = await client.chat.completions.create(**params, temperature=0)
    penalised = await client.chat.completions.create(**params, temperature=0, frequency_penalty=2.0)
    assert penalised.choices[0].message.content != plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(**params, presence_penalty=3.0)
