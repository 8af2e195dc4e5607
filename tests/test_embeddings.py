"""Embeddings end to end: the unmodified `openai` SDK against a real server, real runners
(mlx-embeddings for the demo BERT, mlx-lm for the demo Llama) in one pool; model kinds."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import struct
import subprocess
import sys

import openai
import pytest
from conftest import server_config
from models import build_models, eos_id
from waiting import wait_until_async

from jupyter_mlx_manager.models import kinds
from jupyter_mlx_manager.models.kinds import WrongKind, check_kind, model_kind

EMBED = "local/tiny-embedding"
TEXT = "local/tiny-demo"
DIM = 64  # the demo embedding model's hidden size


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding-models")
    folder = build_models(root, ["tiny-demo"])
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(folder), "--kind", "embedding"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return folder


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "sdk"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        ), token

    return make


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _norm(vector) -> float:
    return math.sqrt(sum(float(x) * float(x) for x in vector))


async def test_embeddings_with_the_openai_sdk(sdk, api, jp_http_port, jp_base_url):
    client, token = await sdk()

    one = await client.embeddings.create(model=EMBED, input="The quick brown fox")
    assert len(one.data) == 1 and len(one.data[0].embedding) == DIM
    assert abs(_norm(one.data[0].embedding) - 1) < 1e-4
    assert one.usage.prompt_tokens > 2 and one.usage.total_tokens == one.usage.prompt_tokens
    assert one.model == EMBED

    texts = [f"notebook {i % 4} runs a model" if i % 2 else "hello world" for i in range(16)]
    many = await client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [d.index for d in many.data] == list(range(16))
    assert all(len(d.embedding) == DIM for d in many.data)
    hello = [d.embedding for d, t in zip(many.data, texts) if t == "hello world"]
    assert len(hello) == 8 and all(v == hello[0] for v in hello)  # identical inputs, identical vectors
    assert many.data[1].embedding != many.data[0].embedding
    assert many.usage.prompt_tokens > 16

    encoded = await client.embeddings.create(model=EMBED, input=texts, encoding_format="base64")
    assert all(isinstance(d.embedding, str) for d in encoded.data)
    for as_b64, as_float in zip(encoded.data, many.data):
        assert _floats(as_b64.embedding) == pytest.approx(as_float.embedding, abs=1e-5)
    assert encoded.usage.prompt_tokens == many.usage.prompt_tokens

    tokens = await client.embeddings.create(model=EMBED, input=[[2, 5, 7, 3], [2, 9, 3]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 7

    short = await client.embeddings.create(model=EMBED, input="hello world", dimensions=16)
    assert len(short.data[0].embedding) == 16 and abs(_norm(short.data[0].embedding) - 1) < 1e-4

    records = (await api("GET", "mlx/api/audit", params={"model": EMBED})).body["records"]
    records = [r for r in records if r["action"] == "embeddings"]  # besides the model's load
    assert len(records) == 5 and all(r["endpoint"].endswith("mlx/v1/embeddings") for r in records)
    assert {r["status"] for r in records} == {"ok"} and all(r["prompt_tokens"] > 0 for r in records)

    # The kernel client: a numpy array, one row per text (its sync HTTP runs off this loop).
    from jupyter_mlx_manager import connect

    kernel = connect(f"http://localhost:{jp_http_port}{jp_base_url}", token)
    vectors = await asyncio.to_thread(kernel.embed, EMBED, ["hello world", "The quick brown fox"])
    assert vectors.shape == (2, DIM) and str(vectors.dtype) == "float32"
    assert vectors[0].tolist() == pytest.approx(hello[0], abs=1e-5)


async def test_bad_inputs_are_400s(sdk):
    client, _ = await sdk()
    cases = [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [[1, 2, 100000]]}, "input"),  # outside the vocabulary
        ({"input": [[-1]]}, "input"),
        ({"input": "word " * 600}, "input"),  # longer than the model's 512 positions
        ({"input": [[5] * 600]}, "input"),
        ({"input": [{"text": "x"}]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": DIM + 1}, "dimensions"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.embeddings.create(model=EMBED, **extra)
        assert refused.value.param == param, (extra, refused.value.body)
    # Still serving after every refusal.
    assert len((await client.embeddings.create(model=EMBED, input="still here")).data) == 1


async def test_wrong_kind_is_400_on_model_and_kinds_share_the_pool(sdk, api):
    client, _ = await sdk()
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model=TEXT, input="hello")
    assert refused.value.param == "model" and "text model" in refused.value.message
    for call in (
        client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}], max_tokens=2),
        client.completions.create(model=EMBED, prompt="hi", max_tokens=2),
        client.responses.create(model=EMBED, input="hi", max_output_tokens=2),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await call
        assert refused.value.param == "model" and "embedding model" in refused.value.message
    assert (await api("GET", "mlx/api/pool")).body["models"] == []  # refused before anything loaded

    await client.embeddings.create(model=EMBED, input="hello")
    await client.chat.completions.create(model=TEXT, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    pool = (await api("GET", "mlx/api/pool")).body["models"]
    assert {m["model"]: m["kind"] for m in pool} == {EMBED: "embedding", TEXT: "text"}
    assert all(m["pid"] and m["memory_bytes"] > 0 for m in pool)
    local = {m["id"]: m for m in (await api("GET", "mlx/api/models/local")).body["models"]}
    assert local[EMBED]["kind"] == "embedding" and local[TEXT]["kind"] == "text"
    assert local[EMBED]["unavailable"] is None

    # Unloaded and loaded again like any model; the management API loads any kind.
    assert (await api("POST", "mlx/api/pool/unload", body={"model": EMBED})).code == 200
    assert (await api("POST", "mlx/api/pool/load", body={"model": EMBED})).body["kind"] == "embedding"
    assert len((await client.embeddings.create(model=EMBED, input="again")).data) == 1


async def test_a_crashed_embedding_runner_takes_nothing_else_down(sdk, api, models_dir):
    client, _ = await sdk()
    chat_params = dict(  # greedy, EOS suppressed: the text runner answers with tokens whatever its weights
        model=TEXT, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0,
        logit_bias={str(eos_id(models_dir / "tiny-demo")): -100},
    )  # fmt: skip
    await client.embeddings.create(model=EMBED, input="hello")
    await client.chat.completions.create(**chat_params)
    pids = {m["model"]: m["pid"] for m in (await api("GET", "mlx/api/pool")).body["models"]}
    os.kill(pids[EMBED], signal.SIGKILL)
    await wait_until_async(  # the pool notices at once (the runner's pipe closes)
        lambda: api("GET", "mlx/api/pool"),
        "the pool to drop the killed embedding runner",
        timeout=10,
        interval=0.05,
        done=lambda pool: EMBED not in {m["model"] for m in pool.body["models"]},
    )
    chat = await client.chat.completions.create(**chat_params)
    assert chat.usage.completion_tokens == 2  # the text model's runner never noticed
    again = await client.embeddings.create(model=EMBED, input="hello")  # loaded anew
    assert len(again.data[0].embedding) == DIM
    pool = {m["model"]: m["pid"] for m in (await api("GET", "mlx/api/pool")).body["models"]}
    assert pool[TEXT] == pids[TEXT] and pool[EMBED] != pids[EMBED]
    records = (await api("GET", "mlx/api/audit", params={"model": EMBED})).body["records"]
    assert "model.crash" in {r["action"] for r in records}


# -- kinds from files (no server) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "files", "kind"),
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, [], "text"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, [], "embedding"),
        ({"model_type": "xlm-roberta"}, [], "embedding"),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, [], "text"),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, ["modules.json"], "embedding"),
        ({"model_type": "gemma3_text", "architectures": ["Gemma3TextModel"]}, [], "embedding"),
        ({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]}, [], "transcription"),
        ({"n_mels": 80, "n_audio_ctx": 1500, "n_vocab": 51865}, [], "transcription"),
        ({"model_type": "kokoro"}, [], "speech"),
        ({"model_type": "qwen2_vl", "vision_config": {}}, ["preprocessor_config.json"], "vision"),
        ({"model_type": "gemma3", "vision_config": {}}, [], "text"),  # no image processor: mlx-lm, text only
    ],
)
def test_model_kind_from_files(tmp_path, config, files, kind):
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in files:
        (tmp_path / name).write_text("{}")
    assert model_kind(tmp_path) == kind


def test_a_kind_without_its_extra_is_refused_naming_it(monkeypatch):
    real = kinds.importlib.util.find_spec
    monkeypatch.setattr(
        kinds.importlib.util, "find_spec", lambda name, *a: None if name == "mlx_embeddings" else real(name, *a)
    )
    with pytest.raises(WrongKind) as refused:
        check_kind("org/e5", "embedding", ("embedding",))
    assert "pip install jupyter-mlx-manager[embeddings]" in refused.value.message
    assert refused.value.param == "model" and refused.value.status_code == 400
    with pytest.raises(WrongKind, match="embedding model"):
        check_kind("org/e5", "embedding", ("text", "vision"))
