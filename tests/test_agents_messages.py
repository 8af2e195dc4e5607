"""What agents (Claude Code above all) send to Messages, and the limits every protocol shares,
with the unmodified `anthropic` and `openai` SDKs against the real server and runners.

The server's `max_tokens_limit` is 8 here, so a client's `max_tokens: 32000` shows clamping.
"""

from __future__ import annotations

import json
import shutil

import anthropic
import openai
import pytest
from conftest import server_config
from models import build_models, eos_id

MODEL = "local/tiny-demo"
IN_PLACE = "local/system-anywhere"  # a template that renders a system turn mid-conversation
LIMIT = 8
CONTEXT = 2048  # the demo model's max_position_embeddings
NOTE = "Reminder: the user prefers short answers about weather in Paris."
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    folder = build_models(tmp_path_factory.mktemp("agents-messages-models"), ["tiny-demo"])
    anywhere = folder / IN_PLACE.split("/")[1]
    shutil.copytree(folder / "tiny-demo", anywhere)
    config = json.loads((anywhere / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    (anywhere / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1, max_tokens_limit=LIMIT)


@pytest.fixture
def connect(api, jp_http_port, jp_base_url):
    """`token, claude, sdk = await connect()`: a fresh API token and unmodified SDK clients."""

    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "agent"})).body["token"]
        base = f"http://localhost:{jp_http_port}{jp_base_url}mlx"
        claude = anthropic.AsyncAnthropic(base_url=base, api_key=token, max_retries=0)
        return token, claude, openai.AsyncOpenAI(base_url=base + "/v1", api_key=token, max_retries=0)

    return make


@pytest.fixture
def no_eos(models_dir):
    return {"logit_bias": {str(eos_id(models_dir / "tiny-demo")): -100}, "temperature": 0}


def _conversation(system_note: bool) -> list[dict]:
    """Claude Code's shape: cache_control on blocks, a system note between turns."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Where?"}]},
    ]
    if system_note:
        messages.append({"role": "system", "content": [{"type": "text", "text": NOTE}]})
    messages.append({"role": "user", "content": "Paris, please."})
    return messages


@pytest.mark.parametrize("model", [MODEL, IN_PLACE])
async def test_system_messages_inside_messages_reach_the_model_and_count_tokens_matches_usage(connect, no_eos, model):
    """Both where the template renders a system turn mid-conversation (kept in place) and where
    it drops one (folded into the next user turn): the note's tokens are in the prompt, and
    count_tokens says exactly what the request then reports."""
    token, claude, sdk = await connect()
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    without = await claude.messages.count_tokens(
        model=model, system=system, messages=_conversation(False), tools=[TOOL]
    )
    counted = await claude.messages.count_tokens(model=model, system=system, messages=_conversation(True), tools=[TOOL])
    note_tokens = (
        await claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": NOTE}])
    ).input_tokens
    empty = (await claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": ""}])).input_tokens
    assert counted.input_tokens - without.input_tokens >= note_tokens - empty - 2  # the note is in the prompt
    reply = await claude.messages.create(
        model=model, max_tokens=4, system=system, messages=_conversation(True), tools=[TOOL], extra_body=no_eos
    )
    assert reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0) == counted.input_tokens
    assert reply.stop_reason in ("max_tokens", "end_turn", "tool_use")


async def test_claude_code_request_shape_is_accepted(connect, no_eos, api):
    """Betas (`?beta=true`, anthropic-beta), unknown fields, metadata, context_management,
    output_config effort hints and every thinking type are accepted; max_tokens above the
    server's limit is clamped (the reply ends with max_tokens)."""
    token, claude, sdk = await connect()
    for thinking in ({"type": "adaptive"}, {"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}):
        async with claude.beta.messages.stream(  # streamed, as Claude Code asks (and the SDK wants for 32000)
            model=MODEL,
            max_tokens=32000,
            betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
            system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            messages=_conversation(True),
            tools=[TOOL],
            thinking=thinking,
            metadata={"user_id": "user_abc_account_1_session_2"},
            extra_body={
                **no_eos,
                "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                "output_config": {"effort": "low"},
                "some_future_field": {"x": 1},
            },
        ) as stream:
            reply = await stream.get_final_message()
        assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == LIMIT, thinking
    # Streaming too, through the raw route with the query string Claude Code sends.
    raw = await api(
        "POST",
        "mlx/v1/messages",
        params={"beta": "true"},
        headers={"anthropic-beta": "claude-code-20250219,oauth-2025-04-20", "anthropic-version": "2023-06-01"},
        body={"model": MODEL, "max_tokens": 32000, "stream": True, "messages": _conversation(True), **no_eos},
    )
    assert raw.code == 200 and '"stop_reason": "max_tokens"' in raw.body


async def test_max_tokens_above_the_limit_is_clamped_on_every_protocol(connect, no_eos):
    token, claude, sdk = await connect()
    chat = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=32000, logit_bias=no_eos["logit_bias"]
    )
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == LIMIT
    chat = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=100_000,
        logit_bias=no_eos["logit_bias"],
    )  # fmt: skip
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == LIMIT
    completion = await sdk.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=32000, logit_bias=no_eos["logit_bias"]
    )
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == LIMIT
    response = await sdk.responses.create(
        model=MODEL, input="Hi", max_output_tokens=32000, extra_body={"logit_bias": no_eos["logit_bias"]}
    )
    assert response.status == "incomplete" and response.usage.output_tokens == LIMIT
    message = await claude.messages.create(
        model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": "Hi"}], extra_body=no_eos, timeout=60
    )  # a timeout of its own: else this SDK refuses a large max_tokens without streaming
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == LIMIT


async def test_a_prompt_longer_than_the_context_gets_anthropics_wording(connect):
    token, claude, sdk = await connect()
    long = [{"role": "user", "content": "weather " * 3000}]
    counted = (await claude.messages.count_tokens(model=MODEL, messages=long)).input_tokens
    assert counted > CONTEXT
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(model=MODEL, max_tokens=100, messages=long)
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"prompt is too long: {counted} tokens > {CONTEXT - 1} maximum")
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=MODEL, messages=long, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in caught.value.body["message"]


async def test_head_probes_answer_200_with_credentials(api, connect):
    token, _, _ = await connect()
    for path in ("mlx", "mlx/v1", "mlx/v1/messages", "mlx/v1/chat/completions", "mlx/v1/responses"):
        assert (await api("HEAD", path)).code == 200, path  # the Jupyter token
        assert (await api("HEAD", path, auth=None, headers={"x-api-key": token})).code == 200, path
        assert (await api("HEAD", path, auth=token)).code == 200, path
        # Without a credential: the base URLs answer (Claude Code probes them bare), the routes do not.
        assert (await api("HEAD", path, auth=None)).code == (200 if path in ("mlx", "mlx/v1") else 401), path
    assert (await api("HEAD", "mlx/v1/nothing-here")).code in (404, 405)


async def test_models_report_the_limits_this_server_enforces(connect):
    _, _, sdk = await connect()
    models = {m.id: m for m in (await sdk.models.list()).data}
    entry = models[MODEL].model_dump()
    assert entry["context_length"] == CONTEXT and entry["max_output_tokens"] == LIMIT
