"""Anthropic Messages with the unmodified `anthropic` SDK, real runners and real MLX."""

from __future__ import annotations

import anthropic
import pytest
from conftest import server_config
from models import build_models, eos_id

MODEL = "local/tiny-demo"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("messages-models"), ["tiny-demo"], tool_model="tool-demo")


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def claude(api, jp_http_port, jp_base_url):
    """`client = await claude()`: an unmodified AsyncAnthropic client with a fresh API token."""

    async def make(api_key=None):
        if api_key is None:
            api_key = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        return anthropic.AsyncAnthropic(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx", api_key=api_key, max_retries=0
        )

    return make


@pytest.fixture
def no_eos(models_dir):
    # This SDK has no sampling parameters any more: temperature (and our logit_bias) go in extra_body.
    return {"logit_bias": {str(eos_id(models_dir / "tiny-demo")): -100}, "temperature": 0}


async def test_create_stream_and_count_tokens(claude, no_eos, api):
    client = await claude()
    params = dict(model=MODEL, max_tokens=10, system="Be brief.", messages=[{"role": "user", "content": "Hello"}])
    reply = await client.messages.create(**params, extra_body=no_eos)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == MODEL
    assert reply.id.startswith("msg_")
    assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None
    assert [b.type for b in reply.content] == ["text"] and reply.content[0].text
    assert reply.usage.output_tokens == 10
    prompt_tokens = reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0)
    assert prompt_tokens > 5

    # Raw events, in Anthropic's order.
    events = [e async for e in await client.messages.create(**params, stream=True, extra_body=no_eos)]
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    body = [k for k in kinds if k != "ping"]
    assert body[1] == "content_block_start" and body[-3] == "content_block_stop"
    assert set(body[2:-3]) == {"content_block_delta"}
    raw = await api("POST", "mlx/v1/messages", body={**params, **no_eos, "stream": True})  # the SDK drops pings
    names = [line[len("event: ") :] for line in raw.body.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and [n for n in names if n != "ping"] == kinds
    assert events[0].message.usage.output_tokens == 0
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 10
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == reply.content[0].text, "greedy output must not depend on streaming"

    # The SDK's stream helper accumulates the same message.
    async with client.messages.stream(**params, extra_body=no_eos) as stream:
        streamed = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(streamed) == final.content[0].text == reply.content[0].text
    assert final.stop_reason == "max_tokens"

    counted = await client.messages.count_tokens(
        model=MODEL, system="Be brief.", messages=[{"role": "user", "content": "Hello"}]
    )
    assert counted.input_tokens == prompt_tokens

    records = (await api("GET", "mlx/api/audit")).body["records"]
    assert any(r["action"] == "messages" and r["status"] == "ok" for r in records)


async def test_stop_sequences(claude, no_eos):
    client = await claude()
    params = dict(model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "Tell me"}])
    extra = {**no_eos, "temperature": 1.0, "seed": 7}
    full = (await client.messages.create(**params, extra_body=extra)).content[0].text
    stop = next(
        (
            full[i : i + 2]
            for i in range(5, len(full) - 2)
            if full[i : i + 2].strip() and full.find(full[i : i + 2]) == i
        ),
        None,
    )
    assert stop, f"no usable stop string in {full!r}"
    reply = await client.messages.create(**params, stop_sequences=[stop], extra_body=extra)
    assert reply.content[0].text == full[: full.find(stop)]
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop


async def test_tool_use_round_trip(claude):
    client = await claude()
    question = [{"role": "user", "content": "Weather in Paris?"}]
    params = dict(model="local/tool-demo", max_tokens=20, extra_body={"temperature": 0})
    reply = await client.messages.create(**params, messages=question, tools=[WEATHER])
    assert reply.stop_reason == "tool_use"
    (call,) = [b for b in reply.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"} and call.id.startswith("toolu_")

    async with client.messages.stream(**params, messages=question, tools=[WEATHER]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("tool_use", "get_weather", {"city": "Paris"})
    ]

    follow_up = question + [
        {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"}]},
    ]
    answer = await client.messages.create(**params, messages=follow_up)
    # Without tools the scripted call is plain text: the tool result went through the template.
    assert answer.stop_reason in ("end_turn", "max_tokens") and "get_weather" in answer.content[0].text


async def test_errors_map_to_the_sdk_exception_classes(claude, api):
    client = await claude()
    message = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="local/nope", max_tokens=4, messages=message)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=4, messages=message, extra_body={"temperature": 5})
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):  # images are kept in the request model, refused for now
        await client.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}],
        )  # fmt: skip
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="local/nope", messages=message)
    bad = await claude(api_key="not-a-token")
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await bad.messages.create(model=MODEL, max_tokens=4, messages=message)
    assert caught.value.body["error"]["type"] == "authentication_error"
    forged = await claude(api_key="eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
    with pytest.raises(anthropic.AuthenticationError):
        await forged.messages.create(model=MODEL, max_tokens=4, messages=message)
    raw = await api("POST", "mlx/v1/messages", body={"model": MODEL, "messages": message})  # no max_tokens
    assert raw.code == 400 and raw.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
