"""Tiny real models for demos and tests, made offline in about two seconds.

Text (`make_demo_model`): a Llama with random weights (`mlx_lm.models.llama`), a byte-level BPE
tokenizer trained here with `tokenizers`, and a ChatML chat template that supports tools
(mlx-lm picks its `json_tools` parser from it). It loads with `mlx_lm.load` and
`mlx_lm.server` like any model from the Hub; its output is gibberish, which is all a test needs.

Embedding (`make_demo_embedding_model`): a BERT with random weights built with mlx-embeddings'
own class (`mlx_embeddings.models.bert`) and a WordPiece tokenizer trained here, loaded by
`mlx_embeddings.load` like a sentence-transformers BERT; its vectors are normalised but mean
nothing.

Vision (`make_demo_vision_model`): a Qwen2-VL with random weights built with mlx-vlm's own
class (`mlx_vlm.models.qwen2_vl`), the text demo's tokenizer with Qwen2-VL's vision tokens, a
chat template that places them for image parts, and Qwen2-VL's image processor configured for
at most 112×112 pixels (a handful of image tokens); `mlx_vlm.load` and `stream_generate` take
it like a Qwen2-VL from the Hub. (A Llava would be smaller still, but mlx-vlm 0.7's Llava
processor hands tokenizer options to transformers 5's image processor, which refuses them.)

Transcription (`make_demo_transcription_model`): a Whisper with random weights built with
mlx-audio's own class and a WhisperProcessor made here; `mlx_audio.stt.utils.load_model` takes it.
Speech (`make_demo_speech_model`): a Soprano (Qwen3 + Vocos decoder) with random weights built
with mlx-audio's own class, the smallest of its text-to-speech models whose text front end is a
plain tokenizer (the Kokoro, Kitten, MeloTTS family need phonemizer / G2P data; most others a
neural codec downloaded from the Hub); `mlx_audio.tts.utils.load_model` takes it. Both sound and
read as noise.

Runs in a child process or the CLI: the Jupyter server never imports MLX.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inspection import DEMO_MARKER

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# What the scripted tool-calling model always answers (a single added token).
SCRIPTED_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
EOS_TOKEN = "<|im_end|>"
# What the scripted reasoning model answers: a think block, then the answer (added tokens each).
THINK_TOKENS = ["<think>", "</think>"]
SCRIPTED_REASONING = "The user greets me. I will answer briefly."
SCRIPTED_ANSWER = ["Hello!", " The answer is 42.", " Anything else?"]

CHAT_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- 'You may call these tools:\n<tools>' }}
    {%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
    {{- '\n</tools>\nCall one as <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
""".strip()

# The reasoning model's template marks thinking as Qwen3's does: `enable_thinking=false`
# closes an empty think block in the prompt, so the model answers at once.
REASONING_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think></think>' }}{%- endif %}"
    "{%- endif %}",
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model is loaded once and shared by every notebook.
Hello! How can I help you today? Local language models run on your own machine, privately.
Jupyter notebooks mix code, text and results. MLX is an array framework for machine learning.
def hello(name):\n    return f"Hello, {name}!"\nfor i in range(10):\n    print(i * i)
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation . , ; : ! ? ( ) [ ] { } " ' - _ / \\ @ # % & * + = < >
"""


@contextlib.contextmanager
def _building(path: Path) -> Iterator[Path]:
    """A scratch folder beside `path` that replaces `path` only when the block succeeds: a
    failed or interrupted build never leaves a half-written model where the catalog looks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        work = scratch / "model"
        work.mkdir()
        yield work
        if path.exists():
            shutil.rmtree(path)
        work.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _save(work: Path, model: Any, config: dict[str, Any], dtype: Any = None) -> None:
    """The model's (random) weights as MLX safetensors, and its config."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.eval(model.parameters())
    weights = dict(tree_flatten(model.parameters()))
    if dtype is not None:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    mx.save_safetensors(str(work / "model.safetensors"), weights, metadata={"format": "mlx"})
    (work / "config.json").write_text(json.dumps(config, indent=2))
    (work / DEMO_MARKER).write_text(
        json.dumps({"demo": True, "weights": "random", "made_by": "jupyter mlx-manager demo-model"})
    )


def _byte_level_bpe(vocab_size: int, special_tokens: list[str] | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer (every byte a token: no text is unknown to it) trained on the
    demo corpus; `special_tokens` take its first ids (tokens added later come after the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens or [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    return tokenizer


# `demo-model --size`: tiny for tests, small for demos, bench for `benchmarks/serve_bench.py` (a
# decode step of roughly 5–20 ms on one CPU core here, so server overhead shows at a realistic ratio;
# on Apple Silicon every size decodes faster, memory-bandwidth-bound).
SIZES = {
    "tiny": {"hidden_size": 64, "num_layers": 2},
    "small": {"hidden_size": 512, "num_layers": 8, "num_heads": 8},
    "bench": {"hidden_size": 384, "num_layers": 6, "num_heads": 6},
}


def make_demo_model(
    path: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    intermediate_size: int | None = None,
    num_heads: int = 4,
    seed: int = 0,
    scripted_tool_call: bool = False,
    scripted_reasoning: bool = False,
    context_length: int = 2048,
) -> Path:
    """Write the model to `path` (atomically: built in a sibling temp dir, then renamed).

    `context_length` is what its config promises (and the server then enforces): agents need
    room for their prompts (Claude Code's is ~55k tokens).

    `scripted_tool_call=True` makes a model that, decoding greedily, always answers with
    one call of the `get_weather` tool (`SCRIPTED_CALL`): a real model whose weights are
    chosen instead of random, so tool calling can be tested end to end.
    `scripted_reasoning=True` makes a thinking model (its vocabulary has `<think>` and
    `</think>`, which is how mlx-lm detects one; its template takes `enable_thinking`) that,
    decoding greedily, answers `<think>SCRIPTED_REASONING</think>` then `SCRIPTED_ANSWER`
    (straight to the answer when thinking is disabled).
    """
    import mlx.core as mx
    from mlx_lm.models import llama
    from tokenizers import AddedToken

    path = Path(path)
    with _building(path) as work:
        tokenizer = _byte_level_bpe(vocab_size, SPECIAL_TOKENS + (THINK_TOKENS if scripted_reasoning else []))
        if scripted_tool_call:
            tokenizer.add_tokens([AddedToken(SCRIPTED_CALL, normalized=False)])
        if scripted_reasoning:
            tokenizer.add_tokens([AddedToken(t, normalized=False) for t in [SCRIPTED_REASONING, *SCRIPTED_ANSWER]])
        scripted = scripted_tool_call or scripted_reasoning
        tokenizer.save(str(work / "tokenizer.json"))
        eos_id = tokenizer.token_to_id(EOS_TOKEN)
        (work / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": EOS_TOKEN,
                    "pad_token": "<|endoftext|>",
                    "bos_token": None,
                    "unk_token": None,
                    "model_max_length": context_length,
                    "add_bos_token": False,
                    "chat_template": REASONING_CHAT_TEMPLATE if scripted_reasoning else CHAT_TEMPLATE,
                },
                indent=2,
            )
        )
        (work / "special_tokens_map.json").write_text(
            json.dumps({"eos_token": EOS_TOKEN, "pad_token": "<|endoftext|>"})
        )

        config = {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "intermediate_size": intermediate_size or hidden_size * 2,
            "num_attention_heads": num_heads,
            "num_key_value_heads": max(1, num_heads // 2),
            "rms_norm_eps": 1e-5,
            "vocab_size": tokenizer.get_vocab_size(),
            "max_position_embeddings": context_length,
            "rope_theta": 10000.0,
            "tie_word_embeddings": not scripted,
            "eos_token_id": eos_id,
            "torch_dtype": "float32",
        }
        mx.random.seed(seed)
        model = llama.Model(llama.ModelArgs.from_dict(config))
        if scripted_tool_call:
            script = ["Ċ", "<tool_call>", SCRIPTED_CALL, "</tool_call>", EOS_TOKEN]
            _script_next_tokens(model, [tokenizer.token_to_id(t) for t in script])
        elif scripted_reasoning:
            script = ["Ċ", "<think>", SCRIPTED_REASONING, "</think>", *SCRIPTED_ANSWER, EOS_TOKEN]
            _script_next_tokens(model, [tokenizer.token_to_id(t) for t in script])
        _save(work, model, config)
    return path


def _script_next_tokens(model, chain: list[int]) -> None:
    """Make the next token a function of the current one along `chain` (greedy decoding).

    Every layer's output projections are zeroed, so the last hidden state is the current
    token's (normalised) embedding; the output head then scores token `chain[i+1]` by its
    similarity to the embedding of `chain[i]` (8x the cross-talk between random vectors).
    """
    import mlx.core as mx

    for layer in model.model.layers:
        layer.self_attn.o_proj.weight = mx.zeros_like(layer.self_attn.o_proj.weight)
        layer.mlp.down_proj.weight = mx.zeros_like(layer.mlp.down_proj.weight)
    embeddings = model.model.embed_tokens.weight
    unit = embeddings / mx.linalg.norm(embeddings, axis=-1, keepdims=True)
    head = mx.zeros_like(model.lm_head.weight)
    for current, following in zip(chain, chain[1:]):
        head[following] = head[following] + 10.0 * unit[current]
    model.lm_head.weight = head


EMBEDDING_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_demo_embedding_model(
    path: str | Path, hidden_size: int = 64, num_layers: int = 2, vocab_size: int = 1024, seed: int = 0
) -> Path:
    """Write a random-weight BERT embedding model to `path` (atomically, as `make_demo_model`).

    It declares `matryoshka_dimensions` (its full size and halvings), so requests for shorter
    embeddings (`dimensions`) can be tried on it."""
    import mlx.core as mx
    from mlx_embeddings.models import bert
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    path = Path(path)
    with _building(path) as work:
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=EMBEDDING_SPECIAL_TOKENS, show_progress=False
        )
        tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tokenizer.save(str(work / "tokenizer.json"))
        (work / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]", "model_max_length": 512,
                },
                indent=2,
            )
        )  # fmt: skip
        config = {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": max(1, hidden_size // 16),
            "intermediate_size": hidden_size * 2,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "vocab_size": tokenizer.get_vocab_size(),
            "pad_token_id": tokenizer.token_to_id("[PAD]"),
            "matryoshka_dimensions": [hidden_size // 2**i for i in range(3) if hidden_size // 2**i >= 8],
            "torch_dtype": "float32",
        }
        mx.random.seed(seed)
        model = bert.Model(bert.ModelArgs.from_dict(config))
        _save(work, model, config)
    return path


VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
VISION_CHAT_TEMPLATE = r"""
{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '\n' }}
    {%- if message.content is string %}{{- message.content }}
    {%- else %}{%- for part in message.content %}
        {%- if part.type == 'image' or part.type == 'image_url' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}
        {%- elif part.type == 'text' %}{{- part.text }}{%- endif %}
    {%- endfor %}{%- endif %}
    {{- '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
""".strip()


def make_demo_vision_model(path: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a random-weight Qwen2-VL to `path` (atomically, as `make_demo_model`)."""
    import mlx.core as mx
    from mlx_vlm.models import qwen2_vl
    from tokenizers import AddedToken, Tokenizer

    path = Path(path)
    with _building(path) as work:
        make_demo_model(work, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
        tokenizer = Tokenizer.from_file(str(work / "tokenizer.json"))
        tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in VISION_TOKENS])
        tokenizer.save(str(work / "tokenizer.json"))
        tokenizer_config = json.loads((work / "tokenizer_config.json").read_text())
        tokenizer_config["chat_template"] = VISION_CHAT_TEMPLATE
        # As Qwen2-VL lists them: what `all_special_ids` (mlx-vlm's `skip_special_tokens`) leaves out of text.
        tokenizer_config["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>", *VISION_TOKENS]
        (work / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        text = json.loads((work / "config.json").read_text())
        head_dim = hidden_size // text["num_attention_heads"]
        config = {
            **text,
            "model_type": "qwen2_vl",
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "vocab_size": tokenizer.get_vocab_size(),
            "tie_word_embeddings": True,
            "image_token_id": tokenizer.token_to_id("<|image_pad|>"),
            "video_token_id": tokenizer.token_to_id("<|video_pad|>"),
            "vision_start_token_id": tokenizer.token_to_id("<|vision_start|>"),
            "vision_end_token_id": tokenizer.token_to_id("<|vision_end|>"),
            # M-RoPE: temporal, height and width sections of half the head dimension
            "rope_scaling": {"type": "mrope", "mrope_section": _thirds(head_dim // 2)},
            "vision_config": {
                "model_type": "qwen2_vl", "depth": 2, "embed_dim": 32, "hidden_size": hidden_size, "num_heads": 2,
                "patch_size": 14, "spatial_patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                "in_channels": 3, "mlp_ratio": 2,
            },
        }  # fmt: skip
        args = qwen2_vl.ModelConfig.from_dict(dict(config))
        args.text_config = qwen2_vl.TextConfig.from_dict(args.text_config)
        args.vision_config = qwen2_vl.VisionConfig.from_dict(config["vision_config"])
        mx.random.seed(seed)
        model = qwen2_vl.Model(args)
        _save(work, model, config)  # over the text model's weights and config
        (work / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "Qwen2VLImageProcessor",
                    "min_pixels": 56 * 56, "max_pixels": 112 * 112, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                    "do_normalize": True, "do_convert_rgb": True,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                },
                indent=2,
            )
        )  # fmt: skip
        (work / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    return path


def _thirds(n: int) -> list[int]:
    """`n` split in three as evenly as possible, the larger parts last (Qwen2-VL's [16, 24, 24])."""
    return [n // 3, (n - n // 3) // 2, n - n // 3 - (n - n // 3) // 2]


# Whisper's special tokens, in the order its tokenizer has them after the text vocabulary
# (English-only layout: one language token); the timestamp tokens <|0.00|>…<|30.00|> come last,
# as Whisper's decoding takes every id from the first timestamp up as a timestamp.
WHISPER_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
    "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]  # fmt: skip


def make_demo_transcription_model(
    path: str | Path, width: int = 32, num_layers: int = 1, vocab_size: int = 512, seed: int = 0
) -> Path:
    """Write a random-weight Whisper to `path` (atomically, as `make_demo_model`).

    mlx-audio's own class (`mlx_audio.stt.models.whisper`) in its MLX layout, and a
    `WhisperProcessor` (a byte-level BPE tokenizer trained here with Whisper's special and
    timestamp tokens, Whisper's 80-bin feature extractor), which mlx-audio's loader reads from
    the folder. The vocabulary is far below Whisper's 51,865, so mlx-audio treats it as an
    English-only model (no language detection). The audio context keeps Whisper's 1,500 frames
    (30 s windows): mlx-audio pads every input to that, so the encoder is kept to one narrow
    layer (about half a second per window on two CPU cores); a 64-token text context bounds the
    gibberish decoded per window."""
    import mlx.core as mx
    from mlx_audio.stt.models.whisper import whisper
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

    path = Path(path)
    with _building(path) as work:
        tokenizer = _byte_level_bpe(vocab_size)
        timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in WHISPER_SPECIAL_TOKENS])
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
            unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=64,
        )  # fmt: skip
        fast.save_pretrained(str(work))
        WhisperFeatureExtractor(feature_size=80).save_pretrained(str(work))
        config = {
            "model_type": "whisper", "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": width,
            "n_audio_head": max(1, width // 32), "n_audio_layer": num_layers, "n_vocab": tokenizer.get_vocab_size(),
            "n_text_ctx": 64, "n_text_state": width, "n_text_head": max(1, width // 32), "n_text_layer": num_layers,
        }  # fmt: skip
        mx.random.seed(seed)
        model = whisper.Model(whisper.ModelDimensions.from_dict(config))
        _save(work, model, config)
    return path


SOPRANO_SPECIAL_TOKENS = ["[STOP]", "[TEXT]", "[START]"]


def make_demo_speech_model(
    path: str | Path, hidden_size: int = 64, num_layers: int = 2, vocab_size: int = 512, seed: int = 0
) -> Path:
    """Write a random-weight Soprano text-to-speech model to `path` (atomically, as `make_demo_model`).

    Soprano (`mlx_audio.tts.models.soprano`) is a Qwen3 language model whose hidden states a Vocos
    decoder turns into 32 kHz audio (2,048 samples per token); its text front end is a plain
    tokenizer (no phonemizer or G2P data to download), here a byte-level BPE trained here with
    its `[STOP]`, `[TEXT]` and `[START]` markers ([STOP] is the pad token, which ends speech).
    mlx-audio fixes the decoder's size for such a folder (eight 512-wide layers), which is most of
    its ~30 MB (float16 on disk; mlx-audio runs the decoder in float32)."""
    import mlx.core as mx
    from mlx_audio.tts.models.soprano import soprano
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    with _building(path) as work:
        tokenizer = _byte_level_bpe(vocab_size)
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SOPRANO_SPECIAL_TOKENS])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, pad_token="[STOP]", eos_token="[STOP]", model_max_length=2048
        )
        fast.save_pretrained(str(work))
        config = {
            "model_type": "soprano", "hidden_size": hidden_size, "num_hidden_layers": num_layers,
            "intermediate_size": hidden_size * 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "head_dim": hidden_size // 2, "rms_norm_eps": 1e-6, "vocab_size": tokenizer.get_vocab_size(),
            "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "sample_rate": 32000,
        }  # fmt: skip
        mx.random.seed(seed)
        model = soprano.Model(soprano.ModelConfig.from_dict({**config, "model_path": str(path)}))
        _save(work, model, config, dtype=mx.float16)
    return path
