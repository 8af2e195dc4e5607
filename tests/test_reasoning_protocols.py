"""A thinking model's reasoning arrives apart from its answer in every protocol, through the
unmodified SDKs and a real server: chat completions (`reasoning_content`), Anthropic Messages
(`thinking` blocks) and Responses (`reasoning` items), streamed and not. The scripted
reasoning demo model (`demo-model --reasoning`) answers `<think>SCRIPTED_REASONING</think>`
then SCRIPTED_ANSWER when decoding greedily."""

from __future__ import annotations

import subprocess
import sys

import anthropic
import openai
import pytest
from conftest import server_config

from jupyter_mlx_manager.models.demo import SCRIPTED_ANSWER, SCRIPTED_REASONING

MODEL = "local/thinker"
ANSWER = "".join(SCRIPTED_ANSWER)
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoning-protocol-models")
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(root / "models"), "--name", "thinker", "--reasoning"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return root / "models"


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def clients(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        base = f"http://localhost:{jp_http_port}{jp_base_url}mlx"
        return (
            openai.AsyncOpenAI(base_url=base + "/v1", api_key=token, max_retries=0),
            anthropic.AsyncAnthropic(base_url=base, api_key=token, max_retries=0),
        )

    return make


async def test_reasoning_and_answer_arrive_apart_in_chat_messages_and_responses(clients):
    client, claude = await clients()
    # Chat completions, whole and streamed; logprobs cover the answer's tokens only.
    reply = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=64, temperature=0, logprobs=True
    )
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content) == (SCRIPTED_REASONING, ANSWER)
    assert [e.token for e in reply.choices[0].logprobs.content] == SCRIPTED_ANSWER
    chunks = [c async for c in await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=64, temperature=0, stream=True
    )]  # fmt: skip
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == SCRIPTED_REASONING
    assert "".join(d.content or "" for d in deltas) == ANSWER

    # Anthropic Messages: a thinking block, then the text.
    params = dict(model=MODEL, messages=MESSAGES, max_tokens=64, extra_body={"temperature": 0})
    message = await claude.messages.create(**params)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert (message.content[0].thinking, message.content[1].text) == (SCRIPTED_REASONING, ANSWER)
    async with claude.messages.stream(**params) as stream:
        events = [e async for e in stream]
    thinking = "".join(
        e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
    )
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert (thinking, text) == (SCRIPTED_REASONING, ANSWER)

    # Responses: a reasoning item, then the message.
    response = await client.responses.create(model=MODEL, input="Hello there", max_output_tokens=64, temperature=0)
    items = [item.model_dump() for item in response.output]
    assert [item["type"] for item in items] == ["reasoning", "message"]
    assert "".join(part["text"] for part in items[0]["content"]) == SCRIPTED_REASONING
    assert response.output_text == ANSWER
    async with client.responses.stream(model=MODEL, input="Hello there", max_output_tokens=64, temperature=0) as stream:
        events = [e async for e in stream]
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert (reasoning, text) == (SCRIPTED_REASONING, ANSWER)
