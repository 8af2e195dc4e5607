"""OpenAI Responses with the unmodified `openai` SDK, real runners and real MLX."""

from __future__ import annotations

import json

import openai
import pytest
from conftest import server_config
from models import build_models, eos_id

MODEL = "local/tiny-demo"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("responses-models"), ["tiny-demo"], tool_model="tool-demo")


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make(auth="jupyter"):
        token = (await api("POST", "mlx/api/auth/tokens", auth=auth, body={"name": "sdk"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


@pytest.fixture
def no_eos(models_dir):
    return {"logit_bias": {str(eos_id(models_dir / "tiny-demo")): -100}}


async def test_create_get_continue_delete_and_other_users(sdk, no_eos, make_user, api):
    client = await sdk()
    first = await client.responses.create(
        model=MODEL, instructions="Be brief.", input="Hello", max_output_tokens=8, temperature=0, extra_body=no_eos
    )
    assert first.object == "response" and first.id.startswith("resp_") and first.model == MODEL
    assert first.status == "incomplete" and first.incomplete_details.reason == "max_output_tokens"
    assert first.output[0].type == "message" and first.output_text
    assert first.usage.output_tokens == 8 and first.usage.input_tokens > 3

    again = await client.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text

    second = await client.responses.create(
        model=MODEL, input="And then?", previous_response_id=first.id, max_output_tokens=4, temperature=0,
        extra_body=no_eos,
    )  # fmt: skip
    # The conversation came along: the first turn's input and output are in this prompt.
    assert second.usage.input_tokens > first.usage.input_tokens + 8
    assert second.previous_response_id == first.id

    unstored = await client.responses.create(
        model=MODEL, input="Hi", max_output_tokens=2, store=False, extra_body=no_eos
    )
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)

    _, bob_jwt = await make_user("bob")
    bob = await sdk(auth=bob_jwt)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await bob.responses.create(model=MODEL, input="x", previous_response_id=first.id, max_output_tokens=2)
    assert caught.value.body["param"] == "previous_response_id"
    assert (await api("DELETE", f"mlx/v1/responses/{first.id}", auth=bob_jwt)).code == 404

    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    records = (await api("GET", "mlx/api/audit")).body["records"]
    assert any(r["action"] == "responses" and r["status"] == "ok" for r in records)


async def test_stream_event_sequence(sdk, no_eos):
    client = await sdk()
    params = dict(model=MODEL, input="Hello", max_output_tokens=6, temperature=0, extra_body=no_eos)
    reply = await client.responses.create(**params)
    async with client.responses.stream(**params) as stream:
        events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete",
    ]  # fmt: skip
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == reply.output_text == events[-1].response.output_text
    assert events[-1].response.status == "incomplete"


async def test_function_call_round_trip(sdk):
    client = await sdk()
    params = dict(model="local/tool-demo", max_output_tokens=20, temperature=0)
    reply = await client.responses.create(**params, input="Weather in Paris?", tools=[WEATHER])
    assert reply.status == "completed"
    (call,) = [item for item in reply.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_")

    async with client.responses.stream(**params, input="Weather in Paris?", tools=[WEATHER]) as stream:
        final = await stream.get_final_response()
    assert [(i.type, i.name) for i in final.output] == [("function_call", "get_weather")]

    answer = await client.responses.create(
        **params,
        previous_response_id=reply.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}],
    )
    # Without tools the scripted call is plain text: the call and its output went through the template.
    assert "get_weather" in answer.output_text


async def test_bad_requests(api, sdk):
    client = await sdk()
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="local/nope", input="x")
    with pytest.raises(openai.BadRequestError) as caught:  # above the server's limit is clamped; this is no count
        await client.responses.create(model=MODEL, input="x", max_output_tokens=2**31)
    assert caught.value.body["param"] == "max_output_tokens"
    for body in (
        {"model": MODEL},
        {"model": MODEL, "input": 5},
        {"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]},
        {"model": MODEL, "input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}},
        {"model": MODEL, "input": "x", "tools": [{"type": "some_future_tool"}]},
        {"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "schema": 3}}},
        {"model": MODEL, "input": "x", "tool_choice": {"type": "function", "name": "nope"}},
        {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]},
    ):
        reply = await api("POST", "mlx/v1/responses", body=body)
        assert reply.code == 400 and set(reply.body["error"]) == {"message", "type", "param", "code"}, (
            body,
            reply.body,
        )
    assert (await api("GET", "mlx/v1/responses/resp_nope")).code == 404
