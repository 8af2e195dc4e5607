"""Audio end to end: the unmodified `openai` SDK against a real server and real mlx-audio
runners (the demo Whisper for transcription, the demo Soprano for speech), next to a text model
in the same pool; the kernel client's `transcribe` and `speak`."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import subprocess
import sys
import wave

import openai
import pytest
from conftest import server_config
from models import build_models

from jupyter_mlx_manager.models.kinds import model_kind

STT = "local/tiny-transcription"
TTS = "local/tiny-speech"
TEXT = "local/tiny-demo"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio-models")
    folder = build_models(root, ["tiny-demo"])
    for kind in ("transcription", "speech"):
        subprocess.run(
            [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
             "--dir", str(folder), "--kind", kind],
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


def _wav(seconds: float = 1.0, rate: int = 22050, channels: int = 2) -> bytes:
    """A tone as a 16-bit WAV, at a rate and channel count the server has to convert."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) * channels
        for i in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def test_the_demo_models_have_their_kinds(models_dir):
    assert model_kind(models_dir / "tiny-transcription") == "transcription"
    assert model_kind(models_dir / "tiny-speech") == "speech"


async def test_transcription_and_speech_with_the_openai_sdk(sdk, api, jp_http_port, jp_base_url):
    client, token = await sdk()
    audio = _wav()

    reply = await client.audio.transcriptions.create(model=STT, file=("tone.wav", audio), temperature=0)
    assert isinstance(reply.text, str)  # random weights: any text, maybe none
    text = await client.audio.transcriptions.create(
        model=STT, file=("tone.wav", audio), response_format="text", temperature=0
    )
    assert isinstance(text, str)
    raw = await client.with_raw_response.audio.transcriptions.create(
        model=STT, file=("tone.wav", audio), response_format="text", temperature=0
    )
    assert raw.headers["content-type"].startswith("text/plain")
    verbose = await client.audio.transcriptions.create(
        model=STT, file=("tone.wav", audio), response_format="verbose_json", temperature=0, language="en"
    )
    assert verbose.language == "en" and verbose.duration == pytest.approx(1.0, abs=0.01)
    assert isinstance(verbose.segments, list)

    speech = await client.audio.speech.create(model=TTS, voice="alloy", input="Hello")
    with wave.open(io.BytesIO(speech.content)) as w:
        assert w.getframerate() == 32000 and w.getnframes() > 0 and w.getnchannels() == 1

    records = (await api("GET", "mlx/api/audit", params={"model": STT})).body["records"]
    records = [r for r in records if r["action"] == "transcriptions"]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert all(r["prompt_tokens"] == 16000 and r["endpoint"].endswith("audio/transcriptions") for r in records)
    assert all(r["audio_seconds"] == 1.0 for r in records)  # one second of 16 kHz audio in, counted as time
    records = (await api("GET", "mlx/api/audit", params={"model": TTS})).body["records"]
    records = [r for r in records if r["action"] == "speech"]
    assert len(records) == 1 and records[0]["status"] == "ok" and records[0]["completion_tokens"] > 0
    assert records[0]["audio_seconds"] > 0

    # The kernel client (its sync HTTP runs off this loop).
    from jupyter_mlx_manager import connect

    kernel = connect(f"http://localhost:{jp_http_port}{jp_base_url}", token)
    assert isinstance(await asyncio.to_thread(kernel.transcribe, STT, audio), str)
    played = await asyncio.to_thread(kernel.speak, TTS, "Hi there.")
    assert played.sample_rate == 32000 and played.data[:4] == b"RIFF" and "<audio" in played._repr_html_()


async def test_wrong_kinds_and_bad_requests_are_400s(sdk):
    client, _ = await sdk()
    cases = [
        (client.audio.transcriptions.create(model=TEXT, file=("a.wav", _wav(0.2))), "model"),
        (client.audio.transcriptions.create(model=TTS, file=("a.wav", _wav(0.2))), "model"),
        (client.audio.speech.create(model=STT, voice="alloy", input="Hello"), "model"),
        (client.chat.completions.create(model=STT, messages=[{"role": "user", "content": "hi"}]), "model"),
        (client.audio.transcriptions.create(model=STT, file=("a.wav", b"not audio at all" * 8)), "file"),
        (client.audio.transcriptions.create(model=STT, file=("a.wav", _wav(0.2)), response_format="srt"), None),
        (client.audio.speech.create(model=TTS, voice="alloy", input=""), "input"),
        (client.audio.speech.create(model=TTS, voice="alloy", input="x" * 4097), "input"),
        (client.audio.speech.create(model=TTS, voice="alloy", input="Hi", response_format="mp3"), None),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            await call
        assert refused.value.status_code == 400
        if param is not None:
            assert refused.value.body["param"] == param, refused.value.body
