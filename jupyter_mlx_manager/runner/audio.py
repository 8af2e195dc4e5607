"""The audio runners' one MLX thread (`python -m jupyter_mlx_manager.runner PATH --kind
transcription|speech`).

It loads the model with mlx-audio (`mlx_audio.stt.utils.load_model` or
`mlx_audio.tts.utils.load_model`: its own model classes, the tokenizer or processor read from
the folder with `trust_remote_code` off; a model that ships code is refused first, as for text
models) and answers, one request at a time in arrival order, `transcribe` commands
(protocol.TranscribeCommand: one `transcription` event, then `done`) and `speak` commands
(protocol.SpeakCommand: `audio` events, then `done`).

The server decodes and resamples uploads (any container) before they get here, so the runner
only checks the PCM it is given (non-empty, at most MAX_AUDIO_SECONDS) and the text (non-empty,
at most MAX_INPUT_CHARS). `temperature` given: that one temperature (Whisper then skips its
fallback schedule); omitted: the model's own default. `voice` is used when the model knows it
(mlx-audio models keep their voices as files in `voices/`), else the model's default voice:
OpenAI's `alloy` and friends mean nothing to these models.

Speech length: a text-to-speech language model stops when it emits its stop token, which a
model with random (or poor) weights rarely does, so generation is capped at
`32 + 2 × characters` audio tokens (at most the model's own 512), more than any real voice needs.

Progress for the server's stall watchdog: Whisper's per-window `decode` is wrapped to count
windows, and speech counts segments, so a long job is not mistaken for a hung runner. Other
transcription models decode in one call, so one longer than the watchdog's bound for a runner
that is alive but makes no progress would be killed.

`done` carries usage for the audit: `prompt_tokens` is the audio samples in (transcription) or
the characters in (speech), `completion_tokens` the text tokens decoded (when the model reports
them) or the audio samples out.
"""

from __future__ import annotations

import base64
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import SpeakCommand, TranscribeCommand
from .serial import Emit, Invalid, SerialEngine

SAMPLE_RATE = 16000  # what every mlx-audio speech-to-text model takes
MAX_AUDIO_SECONDS = 30 * 60
MAX_INPUT_CHARS = 4096  # OpenAI's limit for audio/speech
MAX_SPEECH_TOKENS = 512
CHUNK_SAMPLES = 1 << 20  # float32 samples per `audio` event (4 MiB, well inside the line limit)


class AudioEngine(SerialEngine):
    def __init__(self, model_path: Path, emit: Emit, kind: str):
        assert kind in ("transcription", "speech"), kind
        super().__init__(model_path, emit, kind)

    def load(self, config: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "transcription":
            from mlx_audio.stt.utils import load_model
        else:
            from mlx_audio.tts.utils import load_model
        self.model = load_model(self.model_path)
        self.voices = sorted(p.stem for p in (self.model_path / "voices").glob("*") if p.is_file())
        self._count_windows()
        self._warm_up()
        return {"context_length": None, "vocab_size": None, "sample_rate": self._sample_rate(), "voices": self.voices}

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"transcribe": self._transcribe} if self.kind == "transcription" else {"speak": self._speak}

    # -- speech to text ---------------------------------------------------------------------------
    def _transcribe(self, command: TranscribeCommand) -> None:
        rid = command.id
        try:
            audio = _pcm(command.audio)
            options = self._transcribe_options(command.language, command.temperature)
        except Invalid as exc:
            self.error(rid, str(exc), "invalid_request_error", exc.code, exc.param)
            return
        started = time.perf_counter()
        try:
            result = self.model.generate(audio, **options)
        except Exception as exc:  # an MLX failure: this request fails, the runner serves on
            self.error(rid, f"{type(exc).__name__}: {exc}", "server_error", None)
            return
        segments = [_segment(s) for s in getattr(result, "segments", None) or [] if isinstance(s, dict)]
        self.emit(
            {
                "ev": "transcription", "id": rid, "text": str(getattr(result, "text", "") or "").strip(),
                "language": getattr(result, "language", None) or options.get("language"),
                "segments": segments, "duration": len(audio) / SAMPLE_RATE,
            }
        )  # fmt: skip
        self.emit(
            {
                "ev": "done", "id": rid, "finish_reason": "stop", "prompt_tokens": len(audio),
                "completion_tokens": sum(len(s.get("tokens") or []) for s in segments),
                "duration_ms": (time.perf_counter() - started) * 1000,
            }
        )  # fmt: skip

    def _transcribe_options(self, language: str | None, temperature: float | None) -> dict[str, Any]:
        """The keyword arguments of this model's `generate`: only those its signature takes
        (mlx-audio's models differ), quiet, the language and temperature given."""
        accepted = inspect.signature(self.model.generate).parameters
        options: dict[str, Any] = {}
        if language is not None:
            options["language"] = language
        if temperature is not None:
            options["temperature"] = float(temperature)
        if "verbose" in accepted:
            options["verbose"] = None  # no progress bar or text on stderr
        return {k: v for k, v in options.items() if k in accepted}

    def _count_windows(self) -> None:
        """Whisper decodes window by window through `self.decode`: count each as progress."""
        decode = getattr(self.model, "decode", None)
        if self.kind != "transcription" or not callable(decode):
            return

        def counted(*args, **kwargs):
            self.progress += 1
            return decode(*args, **kwargs)

        self.model.decode = counted

    # -- text to speech ---------------------------------------------------------------------------
    def _speak(self, command: SpeakCommand) -> None:
        rid, text, voice = command.id, command.input, command.voice
        if not text.strip():
            self.error(rid, "input must be a non-empty string", "invalid_request_error", "empty_input", "input")
            return
        if len(text) > MAX_INPUT_CHARS:
            message = f"input has {len(text)} characters; at most {MAX_INPUT_CHARS}"
            self.error(rid, message, "invalid_request_error", "input_too_long", "input")
            return
        accepted = inspect.signature(self.model.generate).parameters
        options: dict[str, Any] = {"voice": voice if voice in self.voices else None}
        options["max_tokens"] = min(MAX_SPEECH_TOKENS, 32 + 2 * len(text))
        options["verbose"] = False
        options = {k: v for k, v in options.items() if k in accepted}
        started = time.perf_counter()
        samples, sample_rate = 0, self._sample_rate()
        try:
            for result in self.model.generate(text, **options):
                if rid in self.cancelled:
                    self.emit({"ev": "done", "id": rid, "finish_reason": "cancelled", "prompt_tokens": len(text)})
                    return
                audio = np.asarray(result.audio, dtype="<f4").reshape(-1)
                sample_rate = int(getattr(result, "sample_rate", None) or sample_rate)
                for start in range(0, len(audio), CHUNK_SAMPLES):
                    data = base64.b64encode(audio[start : start + CHUNK_SAMPLES].tobytes()).decode()
                    self.emit({"ev": "audio", "id": rid, "data": data, "sample_rate": sample_rate})
                samples += len(audio)
                self.progress += 1
        except Exception as exc:  # an MLX failure: this request fails, the runner serves on
            self.error(rid, f"{type(exc).__name__}: {exc}", "server_error", None)
            return
        self.emit(
            {
                "ev": "done", "id": rid, "finish_reason": "stop", "prompt_tokens": len(text),
                "completion_tokens": samples, "sample_rate": sample_rate,
                "duration_ms": (time.perf_counter() - started) * 1000,
            }
        )  # fmt: skip

    # -- shared -----------------------------------------------------------------------------------
    def _warm_up(self) -> None:
        """One tiny request before `ready`, so that the first user's request does not pay for
        MLX compiling the model's kernels (seconds for a speech decoder's ISTFT)."""
        if self.kind == "transcription":
            audio = np.zeros(SAMPLE_RATE // 10, dtype=np.float32)
            self.model.generate(audio, **self._transcribe_options(None, 0.0))
        else:
            accepted = inspect.signature(self.model.generate).parameters
            options = {k: v for k, v in {"max_tokens": 4, "verbose": False}.items() if k in accepted}
            for _ in self.model.generate("Hi.", **options):
                pass

    def _sample_rate(self) -> int:
        if self.kind == "transcription":
            return SAMPLE_RATE
        return int(getattr(self.model, "sample_rate", None) or 24000)


def _pcm(data: str) -> np.ndarray:
    """float32 samples of base64 little-endian int16 PCM, checked."""
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise Invalid("audio is not valid base64", "invalid_field", "file") from None
    if len(raw) < 2 or len(raw) % 2:
        raise Invalid("the audio is empty", "empty_audio", "file")
    if len(raw) // 2 > MAX_AUDIO_SECONDS * SAMPLE_RATE:
        raise Invalid(f"the audio is longer than {MAX_AUDIO_SECONDS // 60} minutes", "audio_too_long", "file")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _segment(segment: dict[str, Any]) -> dict[str, Any]:
    """A segment as JSON can carry it: plain numbers (NaN, as random weights give, → None)."""
    out: dict[str, Any] = {}
    for key, value in segment.items():
        if isinstance(value, (np.integer, np.floating)):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        if key == "tokens":
            value = [int(t) for t in value or []]
        if value is None or isinstance(value, (str, int, float, list)):
            out[key] = value
    return out
