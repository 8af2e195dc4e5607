"""`mlx/v1/audio/transcriptions` and `mlx/v1/audio/speech`: requests validated, run on an audio
model's runner, audited.

Transcriptions take OpenAI's multipart form: `file` (at most MAX_UPLOAD_BYTES), `model`,
`language`, `response_format` (`json` → `{"text"}`, `text` → the text as text/plain,
`verbose_json` → language, duration and segments too), `temperature` (given: that one
temperature; omitted: the model's own schedule), `prompt` and `timestamp_granularities` are
refused rather than silently ignored. The upload is decoded here, before any model loads, with
miniaudio (mlx-audio's own dependency, so it is there wherever an audio model can be served):
WAV (integer or float PCM), FLAC, MP3 and Ogg Vorbis, mixed down to mono and resampled to the
16 kHz every speech-to-text model takes; anything else is a 400 naming those formats. The runner
gets int16 PCM (half the bytes of float32 on its command line).

Speech takes OpenAI's JSON: `model`, `input` (1 to 4,096 characters), `voice` (a voice of the
model's, else its default voice), `response_format` `wav` (the default here: OpenAI's mp3, opus,
aac and flac would need encoders this server does not ship) and `speed` 1 only. The reply is a
16-bit PCM WAV at the model's sample rate.

Both go through the one serving pipeline with the endpoint's kind (a chat model named here is
a 400 on `model`, and so is a transcription model on speech) and write one audit record:
`prompt_tokens` holds the audio samples in (transcription) or the characters in (speech),
`completion_tokens` the text tokens decoded or the audio samples out, and `audio_seconds` the
seconds of audio in or out (what usage views count audio in).
"""

from __future__ import annotations

import base64
import io
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..auth import Actor
from ..models.ids import is_valid_model_id
from ..protocols.models import SpeechBody, read
from .pipeline import ServingFailed, ServingPipeline
from .request import MAX_SPEECH_CHARS, InvalidParam

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit
SAMPLE_RATE = 16000
FORMATS = "WAV, FLAC, MP3 or Ogg Vorbis"
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")


@dataclass
class TranscriptionRequest:
    model: str
    pcm: bytes  # int16 little-endian mono at SAMPLE_RATE
    language: str | None = None
    response_format: str = "json"
    temperature: float | None = None

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


@dataclass
class SpeechRequest:
    model: str
    input: str
    voice: str | None = None


def _model(value: Any) -> str:
    if not is_valid_model_id(value):
        raise InvalidParam("model must be a model id such as 'org/name' or 'local/<folder>'", "model", "invalid_model")
    return value


def parse_transcription(fields: dict[str, str], file: bytes | None) -> TranscriptionRequest:
    """The request from a multipart form's fields and file, or InvalidParam naming the field."""
    model = _model(fields.get("model"))
    for unsupported in ("prompt", "timestamp_granularities", "timestamp_granularities[]"):
        if fields.get(unsupported):
            raise InvalidParam(f"{unsupported} is not supported here", unsupported.split("[")[0], "unsupported")
    response_format = fields.get("response_format") or "json"
    if response_format not in TRANSCRIPTION_FORMATS:
        raise InvalidParam(
            f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}", "response_format", "invalid_value"
        )
    language = fields.get("language") or None
    if language is not None and not (1 <= len(language) <= 32 and language.replace("-", "").isalpha()):
        raise InvalidParam("language must be a language code such as 'en'", "language", "invalid_value")
    temperature = None
    if fields.get("temperature"):
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            temperature = -1.0
        if not 0 <= temperature <= 1:
            raise InvalidParam("temperature must be a number between 0 and 1", "temperature", "invalid_value")
    if not file:
        raise InvalidParam("file is required: the audio to transcribe", "file", "missing_file")
    if len(file) > MAX_UPLOAD_BYTES:
        raise InvalidParam(f"file is larger than {MAX_UPLOAD_BYTES // 2**20} MB", "file", "file_too_large")
    return TranscriptionRequest(model, decode_audio(file), language, response_format, temperature)


def decode_audio(data: bytes) -> bytes:
    """int16 mono PCM at 16 kHz of an uploaded file (see the module docstring), or a 400."""
    try:
        import miniaudio
    except ImportError:
        raise InvalidParam(
            "decoding audio needs miniaudio: pip install jupyter-mlx-manager[audio]", "file", "extra_not_installed"
        ) from None
    try:
        decoded = miniaudio.decode(
            data, output_format=miniaudio.SampleFormat.SIGNED16, nchannels=1, sample_rate=SAMPLE_RATE
        )
    except miniaudio.DecodeError:
        raise InvalidParam(f"file is not audio this server can decode ({FORMATS})", "file", "invalid_audio") from None
    pcm = np.asarray(decoded.samples, dtype="<i2").tobytes()
    if not pcm:
        raise InvalidParam("file holds no audio samples", "file", "empty_audio")
    return pcm


def parse_speech(body: dict[str, Any]) -> SpeechRequest:
    """The request from a JSON body, or InvalidParam naming the field at fault."""
    model = _model(body.get("model"))
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InvalidParam("input must be a non-empty string", "input", "empty_input")
    if len(text) > MAX_SPEECH_CHARS:
        raise InvalidParam(f"input has {len(text)} characters; at most {MAX_SPEECH_CHARS}", "input", "input_too_long")
    return SpeechRequest(model, text, read(SpeechBody, body).voice)  # voice, format, speed: protocols/models.py


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit PCM mono WAV of float samples (clipped to [-1, 1])."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


class AudioService:
    """Transcription and speech on the one serving pipeline."""

    def __init__(self, pipeline: ServingPipeline):
        self.pipeline = pipeline

    async def transcribe(
        self, actor: Actor, endpoint: str, request: TranscriptionRequest, request_id: str
    ) -> dict[str, Any]:
        """The runner's transcription (`text`, `language`, `duration`, `segments`)."""
        command = {"audio": base64.b64encode(request.pcm).decode(), "language": request.language}
        if request.temperature is not None:
            command["temperature"] = request.temperature
        result: dict[str, Any] = {}
        async with self.pipeline.serve(
            actor, endpoint, request.model, request_id, kinds=("transcription",), action="transcriptions"
        ) as call:
            async for event in call.events(call.model.transcribe(command, request_id), _param):
                if event["ev"] == "transcription":
                    result = event
            if not result:
                raise ServingFailed("the runner gave no transcription")
            call.usage.audio_seconds = round(request.seconds, 3)
        return {k: result.get(k) for k in ("text", "language", "duration", "segments")}

    async def speak(self, actor: Actor, endpoint: str, request: SpeechRequest, request_id: str) -> bytes:
        """A WAV of the runner's samples."""
        chunks: list[np.ndarray] = []
        sample_rate = 0
        command = {"input": request.input, "voice": request.voice}
        async with self.pipeline.serve(
            actor, endpoint, request.model, request_id, kinds=("speech",), action="speech"
        ) as call:
            async for event in call.events(call.model.speak(command, request_id), _param):
                if event["ev"] == "audio":
                    chunks.append(np.frombuffer(base64.b64decode(event["data"]), dtype="<f4"))
                    sample_rate = int(event["sample_rate"])
            samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype="<f4")
            if not sample_rate or not len(samples):
                raise ServingFailed("the model produced no audio")
            call.usage.audio_seconds = round(len(samples) / sample_rate, 3)
        return wav_bytes(samples, sample_rate)


def _param(name: str | None) -> str:
    """The runner's audio errors name no field of the form but the model's."""
    return name or "model"
