"""The vision demo model: built offline with mlx-vlm's own classes, loaded and run by mlx-vlm
(in a child process: the test process hosts servers and never imports MLX), recognised as a
vision model by the catalog, and served in the pool by the vision runner (text chat; images in
chat wait for the request model to carry them)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys

import openai
import pytest
from conftest import server_config
from models import build_models

from jupyter_mlx_manager.models.catalog import ModelCatalog
from jupyter_mlx_manager.models.kinds import model_kind

VISION = "local/tiny-vision"
TEXT = "local/tiny-demo"

GENERATE = r"""
import sys
from mlx_vlm import load, stream_generate
from mlx_vlm.prompt_utils import apply_chat_template
from PIL import Image

model, processor = load(sys.argv[1])
prompt = apply_chat_template(processor, model.config, "What is in this picture?", num_images=1)
for result in stream_generate(model, processor, prompt, image=[Image.new("RGB", (80, 60), (200, 30, 30))], max_tokens=4):
    pass
print(result.prompt_tokens, result.generation_tokens)
"""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-models")
    build_models(root, ["tiny-demo"])
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(root / "models"), "--kind", "vision"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return root / "models"


def test_the_demo_vision_model_runs_in_mlx_vlm(models_dir):
    folder = models_dir / "tiny-vision"
    assert model_kind(folder) == "vision"
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 4 * 1024 * 1024
    out = subprocess.run(
        [sys.executable, "-c", GENERATE, str(folder)], check=True, capture_output=True, text=True, timeout=300
    )
    prompt_tokens, generated = map(int, out.stdout.split()[-2:])
    assert generated == 4 and prompt_tokens > 10  # the image's tokens are in the prompt
    info = {m["id"]: m for m in ModelCatalog([models_dir], hub_cache=models_dir / "no-cache").list_local()}
    assert info[VISION]["kind"] == "vision" and info[VISION]["unavailable"] is None
    assert info[TEXT]["kind"] == "text"
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir)


async def test_a_vision_model_chats_in_the_pool_and_is_refused_elsewhere(api, jp_http_port, jp_base_url, models_dir):
    token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
    client = openai.AsyncOpenAI(
        base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
    )
    listed = {m["id"]: m["kind"] for m in (await api("GET", "mlx/api/models/local")).body["models"]}
    assert listed == {VISION: "vision", TEXT: "text"}
    messages = [{"role": "user", "content": "hi"}]
    eos = {str(json.loads((models_dir / "tiny-vision" / "config.json").read_text())["eos_token_id"]): -100}
    reply = await client.chat.completions.create(model=VISION, messages=messages, max_tokens=5, logit_bias=eos)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens > 5
    stream = await client.chat.completions.create(
        model=VISION,
        messages=messages,
        max_tokens=5,
        logit_bias=eos,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage.completion_tokens == 5
    (pooled,) = (await api("GET", "mlx/api/pool")).body["models"]
    assert pooled["model"] == VISION and pooled["kind"] == "vision" and pooled["requests"] == 2
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model=VISION, input="hi")
    assert refused.value.param == "model" and "vision model" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:  # no silent tools on a vision model
        await client.chat.completions.create(
            model=VISION, messages=messages, max_tokens=2,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )  # fmt: skip
    assert refused.value.param == "tools"
    assert (await api("POST", "mlx/api/pool/unload", body={"model": VISION})).code == 200
    assert (await api("POST", "mlx/api/pool/load", body={"model": VISION})).body["kind"] == "vision"


def _png(width: int, height: int) -> bytes:
    """A valid PNG of noise (so it does not compress) made with PIL in this process."""
    from PIL import Image

    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


def _data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _ask(url: str, text: str = "what is in it?") -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        base_url = f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1"
        return openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0), token

    return make


async def test_images_in_chat(sdk, api, mlx_app, tmp_path, jp_http_port, jp_base_url):
    client, token = await sdk()
    picture = _data_url(_png(64, 48))
    stream = await client.chat.completions.create(
        model=VISION, messages=_ask(picture), max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    with_image = chunks[-1].usage.prompt_tokens
    plain = await client.chat.completions.create(
        model=VISION, messages=[{"role": "user", "content": "what is in it?"}], max_tokens=1
    )
    assert with_image > plain.usage.prompt_tokens  # the image's tokens
    refusals = [
        _ask(_data_url(b"plain text, not an image", "text/plain")),
        _ask(_data_url(b"plain text, not an image")),  # claims PNG, is not
        _ask("https://example.com/cat.png"),
        _ask("data:image/png;base64,@@@not-base64@@@"),
        _ask(_data_url(b"\x89PNG\r\n\x1a\n" + bytes(20 * 1024 * 1024))),  # over 20 MB
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture}}] * 9}],  # over 8
    ]
    for messages in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=VISION, messages=messages, max_tokens=2)
        assert refused.value.param == "messages", refused.value.body
    with pytest.raises(openai.BadRequestError) as refused:  # a text model takes no images
        await client.chat.completions.create(model=TEXT, messages=_ask(picture), max_tokens=2)
    assert refused.value.param == "model" and "vision" in refused.value.message

    # Anthropic image blocks and Responses input_image go through the same checks.
    png = base64.b64encode(_png(24, 24)).decode()
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    body = {"model": VISION, "max_tokens": 2, "messages": [{"role": "user", "content": [block]}]}
    reply = await api("POST", "mlx/v1/messages", body=body)
    assert reply.code == 200 and reply.body["usage"]["input_tokens"] > 0, reply.body
    block["source"]["data"] = base64.b64encode(b"GIF8 is not enough").decode()
    assert (await api("POST", "mlx/v1/messages", body=body)).code == 400
    item = {"role": "user", "content": [{"type": "input_image", "image_url": f"data:image/png;base64,{png}"}]}
    reply = await api("POST", "mlx/v1/responses", body={"model": VISION, "input": [item], "max_output_tokens": 2})
    assert reply.code == 200, reply.body

    # The kernel client: a message mixing text and images (PIL, PNG bytes, a path).
    from PIL import Image

    from jupyter_mlx_manager import connect

    path = tmp_path / "picture.png"
    path.write_bytes(_png(32, 32))
    kernel = connect(f"http://localhost:{jp_http_port}{jp_base_url}", token)
    content = ["compare", Image.new("RGB", (40, 30), (0, 0, 255)), _png(20, 20), path]
    reply = await asyncio.to_thread(kernel.chat, VISION, [{"role": "user", "content": content}], max_tokens=2)
    assert isinstance(reply, str)

    # With one model slot, the vision and text models evict each other like any two models.
    mlx_app.pool.max_loaded_models = 1
    await client.chat.completions.create(model=TEXT, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert [m["model"] for m in (await api("GET", "mlx/api/pool")).body["models"]] == [TEXT]
    await client.chat.completions.create(model=VISION, messages=_ask(picture), max_tokens=1)
    assert [m["kind"] for m in (await api("GET", "mlx/api/pool")).body["models"]] == ["vision"]
