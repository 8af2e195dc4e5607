"""Model kinds: which MLX package serves a model, and which routes serve a kind. One registry
(`KIND_REGISTRY`) that the catalog, pool, runner, services, Hub search, CLI and the OpenAPI
document (hence the frontend's types) all read.

`model_kind(path)` tells a model's kind from its files, as those packages pick a model class:
the config's `model_type` (or mlx-audio's `architecture`) names a module of theirs,
`architectures` tells an encoder from a causal LM where a model type is served by both, and a
vision model ships an image processor. The tables below are those packages' model modules
(mlx-embeddings 0.1, mlx-audio 0.6), so a kind is known even where its package, a wheel extra,
is not installed: such models are listed, and refused with the extra's name.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParam
from .inspection import read_json


@dataclass(frozen=True)
class Kind:
    """What serves a kind of model, and where it is served."""

    name: str
    package: str  # the MLX package that serves it (looked up, never imported by the server)
    extra: str | None  # the wheel extra that installs that package
    generative: bool  # served by chat, completions, Messages and Responses
    route: str  # the OpenAI-compatible route that serves it, under mlx/v1/
    hub_pipelines: tuple[str, ...]  # the Hub's pipeline tags of such models
    hub_libraries: tuple[str, ...]  # the Hub's libraries that serve this kind only
    demo_name: str  # what `jupyter mlx-manager demo-model --kind` names its demo model


KIND_REGISTRY = {
    kind.name: kind
    for kind in (
        Kind("text", "mlx_lm", None, True, "chat/completions", ("text-generation", "text2text-generation"),
             ("mlx-lm", "mlx_lm"), "tiny-demo"),
        Kind("vision", "mlx_vlm", "vision", True, "chat/completions",
             ("image-text-to-text", "image-to-text", "visual-question-answering"), ("mlx-vlm", "mlx_vlm"),
             "tiny-vision"),
        Kind("embedding", "mlx_embeddings", "embeddings", False, "embeddings",
             ("feature-extraction", "sentence-similarity"),
             ("mlx-embeddings", "mlx_embeddings", "sentence-transformers"), "tiny-embedding"),
        Kind("transcription", "mlx_audio", "audio", False, "audio/transcriptions", ("automatic-speech-recognition",),
             ("mlx-whisper",), "tiny-transcription"),
        Kind("speech", "mlx_audio", "audio", False, "audio/speech", ("text-to-speech", "text-to-audio"), (),
             "tiny-speech"),
    )
}  # fmt: skip
KINDS = tuple(KIND_REGISTRY)
GENERATIVE_KINDS = tuple(name for name, kind in KIND_REGISTRY.items() if kind.generative)

# mlx_embeddings.models: encoders only it serves, and model types it shares with mlx-lm (decoder
# embedders such as Qwen3-Embedding, EmbeddingGemma), which are embedders only when no architecture
# is a generative head.
ENCODER_TYPES = {"bert", "xlm_roberta", "modernbert", "siglip", "colqwen2_5", "colidefics3", "llama_bidirec"}
_SHARED_EMBEDDING_TYPES = {"qwen3", "gemma3_text", "lfm2", "qwen3_vl", "llama_nemotron_vl"}
_GENERATIVE_HEADS = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
# mlx_audio.stt.models and its MODEL_REMAPPING keys.
TRANSCRIPTION_TYPES = {
    "canary", "cohere_asr", "fireredasr2", "fun_asr_nano", "glmasr", "glm", "granite_speech",
    "granite_speech5_ctc", "granite_speech_nar", "granite_speech_plus", "higgs_audio_3", "lasr_ctc", "mega_asr",
    "mimo_v2_asr", "ming_v3_asr", "mms", "moonshine", "moss_transcribe_diarize", "nemo", "nemotron_asr",
    "parakeet", "parakeet_tdt", "phonon", "phonon2", "qwen2_audio", "qwen3_asr", "sensevoice", "vibevoice_asr",
    "voxtral", "voxtral_realtime", "wav2vec", "wav2vec2", "whisper",
}  # fmt: skip
# mlx_audio.tts.models and its MODEL_REMAPPING keys, without the language-model backbones it also
# keeps there (llama, qwen3, dense), which it tells apart by the repo's name, not the config.
SPEECH_TYPES = {
    "arktts", "bailingmm", "bark", "breeze", "breeze_tts", "chatterbox", "chatterbox_turbo", "confucius4", "csm",
    "dia", "dramabox", "echo_tts", "fish_drama3", "fish_qwen3_omni", "gradium_phonon_tts", "higgs_audio",
    "higgs_audio_v3", "higgs_multimodal_qwen3", "indextts", "irodori_tts", "kitten", "kitten_tts", "kokoro",
    "kugelaudio", "lingv3_tts", "longcat_audiodit", "marvis", "melotts", "moss_tts", "moss_tts_delay",
    "moss_tts_local", "moss_tts_nano", "omnivoice", "outetts", "pocket_tts", "qwen3_tts", "rumik_oss", "sesame",
    "soprano", "spark", "tada", "vibevoice", "vibevoice_streaming", "voxcpm", "voxcpm2", "voxtral_tts", "zonos2",
}  # fmt: skip
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def model_kind(path: Path, config: dict[str, Any] | None = None) -> str:
    """The kind of the model in folder `path` (see the module docstring); `text` by default."""
    config = read_json(path / "config.json") if config is None else config
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    raw = config.get("model_type") or config.get("architecture") or text_config.get("model_type") or ""
    model_type = str(raw).lower().replace("-", "_")
    if model_type in TRANSCRIPTION_TYPES or {"n_mels", "n_audio_ctx"} <= config.keys():  # mlx-whisper's layout
        return "transcription"
    if model_type in SPEECH_TYPES:
        return "speech"
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    generative = any(a.endswith(_GENERATIVE_HEADS) for a in architectures)
    sentence_transformers = any((path / name).is_file() for name in _SENTENCE_TRANSFORMERS_FILES)
    if model_type in ENCODER_TYPES or (
        model_type in _SHARED_EMBEDDING_TYPES and (sentence_transformers or (architectures and not generative))
    ):
        return "embedding"
    if isinstance(config.get("vision_config"), dict) and any((path / n).is_file() for n in _IMAGE_PROCESSOR_FILES):
        return "vision"
    return "text"


def with_article(word: str) -> str:
    """`a text`, `an embedding`: a kind with its article (by its first letter, right for every kind)."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def missing_extra(kind: str) -> str | None:
    """Why models of `kind` cannot be served here, naming the extra to install; None if they can.
    The package is looked up, not imported (the server never imports MLX)."""
    served = KIND_REGISTRY.get(kind)
    if served is not None and served.extra is not None and importlib.util.find_spec(served.package) is None:
        return f"{kind} models need {served.package}: pip install jupyter-mlx-manager[{served.extra}]"
    return None


class WrongKind(InvalidParam):
    """The model exists but this endpoint (or this server) cannot serve its kind: a 400 naming
    the `model` field, so an SDK reports which argument was wrong."""

    def __init__(self, message: str, code: str = "model_kind_not_supported"):
        super().__init__(message, "model", code)


def check_kind(model_id: str, kind: str, wanted: tuple[str, ...] | None = None) -> None:
    """WrongKind unless a model of `kind` can be served here (and, with `wanted`, is one of those)."""
    if wanted is not None and kind not in wanted:
        raise WrongKind(f"{model_id} is {with_article(kind)} model; this endpoint serves {' or '.join(wanted)} models")
    problem = missing_extra(kind)
    if problem:
        raise WrongKind(f"{model_id} cannot be served: {problem}", code="extra_not_installed")
