"""What a model folder's files say, read cheaply and without MLX: config.json, the JSON headers
of the safetensors files (never the tensors), tokenizer_config.json and chat templates.

`context_length(config, tokenizer_config)` is the one rule for a model's context: the catalog
reports it and the runner enforces it (imported there; this module never imports MLX).
`load_problem(path)` is what the pool asks before it spawns a runner for a folder.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

# Written by models/demo.py into each demo model: its weights are random (`"demo": true` in listings).
DEMO_MARKER = "mlx_manager_demo.json"
# In an adapter's folder (`adapter/<name>`, see models/ids.py): the base's config and tokenizer
# files, mlx-lm's `adapters.safetensors` and `adapter_config.json`, and this marker naming the base.
ADAPTER_MARKER = "mlx_manager_adapter.json"
_HEADER_LIMIT = 100 * 1024 * 1024


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files: the pool's memory estimate before a model is loaded (an
    adapter's with its base model's)."""
    own = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    base = adapter_base(path)
    return own + (weights_bytes(Path(base["base_path"])) if base and Path(base["base_path"]).is_dir() else 0)


def adapter_base(path: Path) -> dict[str, Any] | None:
    """`{"base": model id, "base_path": folder}` of an adapter's folder; None for a model."""
    marker = read_json(path / ADAPTER_MARKER)
    return marker if isinstance(marker.get("base"), str) and isinstance(marker.get("base_path"), str) else None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; {} if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (only the first 8 + N bytes are read)."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                return {}
            (length,) = struct.unpack("<Q", prefix)
            if length > _HEADER_LIMIT:
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("quantization", "quantization_config"):
        quant = config.get(key)
        if isinstance(quant, dict) and isinstance(quant.get("bits"), int):
            return {"bits": quant["bits"], "group_size": quant.get("group_size"), "mode": quant.get("mode", "affine")}
    return None


def count_parameters(headers: list[dict[str, Any]], config: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """Parameters (quantized weights unpacked: a U32 holds 32/bits of them; scales and biases
    are not counted) and the element count per dtype."""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    default_bits = quant.get("bits") if isinstance(quant, dict) else None
    tensors: dict[str, dict[str, Any]] = {}
    for header in headers:
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict):
                tensors[name] = meta
    total, by_dtype = 0, {}
    for name, meta in tensors.items():
        n = 1
        for dim in meta.get("shape") or []:
            n *= int(dim)
        dtype = str(meta.get("dtype"))
        by_dtype[dtype] = by_dtype.get(dtype, 0) + n
        base = name.rsplit(".", 1)[0]
        packed = tensors.get(f"{base}.weight", {}).get("dtype") == "U32"
        if name.endswith((".scales", ".biases")) and packed:
            continue
        if dtype == "U32" and name.endswith(".weight") and f"{base}.scales" in tensors:
            layer = quant.get(base) if isinstance(quant, dict) else None
            bits = layer.get("bits") if isinstance(layer, dict) else default_bits
            if isinstance(bits, int) and bits > 0:
                n = n * 32 // bits
        total += n
    return total, by_dtype


DEFAULT_CONTEXT_LENGTH = 4096


def context_length(config: dict[str, Any], tokenizer_config: dict[str, Any]) -> int:
    """A model's context in tokens — what the catalog reports and the runner enforces (prompt
    plus completion): the first positive integer of the config's position limits (its own,
    then its `text_config`'s), else the tokenizer's `model_max_length` (when plausible),
    else DEFAULT_CONTEXT_LENGTH."""
    keys = ("max_position_embeddings", "max_sequence_length", "max_seq_len", "seq_length", "n_positions", "n_ctx")
    for source in (config, config.get("text_config") or {}):
        if isinstance(source, dict):
            for key in keys:
                value = source.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    value = tokenizer_config.get("model_max_length")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10_000_000:
        return value
    return DEFAULT_CONTEXT_LENGTH


def chat_template_text(path: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """Every chat template the model ships (tokenizer_config.json, chat_template.jinja/.json)."""
    parts = []
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        parts.append(template)
    elif isinstance(template, list):
        parts += [t.get("template", "") for t in template if isinstance(t, dict) and isinstance(t.get("template"), str)]
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        try:
            parts.append(jinja.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            pass
    as_json = read_json(path / "chat_template.json").get("chat_template")
    if isinstance(as_json, str):
        parts.append(as_json)
    return "\n".join(parts) if parts else None


# mlx-lm's tool parsers by what a chat template says (every marker of an entry present), in order.
_TEMPLATE_TOOL_PARSERS = (
    (("<minimax:tool_call>",), "minimax_m2"),
    (("<|tool_call>", "<tool_call|>"), "gemma4"),
    (("<start_function_call>",), "function_gemma"),
    (("<longcat_tool_call>",), "longcat"),
    (("<arg_key>",), "glm47"),
    (("<|tool_list_start|>",), "pythonic"),
    (("<|tool_call_start|>",), "pythonic"),
    (("<tool_call>\\n<function=",), "qwen3_coder"),
    (("<tool_call>\n<function=",), "qwen3_coder"),
    (("<|tool_calls_section_begin|>",), "kimi_k2"),
    (('<function name="', '<param name="'), "minicpm5"),
    (("[TOOL_CALLS]",), "mistral"),
    (("<atem:function_calls>",), "muse_spark"),
    (("<tool_call>", "tool_call.name"), "json_tools"),
)


def infer_tool_parser(chat_template: str | None, tokenizer_config: dict[str, Any]) -> str | None:
    """mlx-lm's tool parser choice (`tokenizer_utils._infer_tool_parser`, 0.32), from the
    template's markers only — no tokenizer is loaded, so the vocabulary check is limited to
    the added tokens listed in tokenizer_config.json."""
    explicit = tokenizer_config.get("tool_parser_type")
    if isinstance(explicit, str) and explicit:
        return explicit
    if isinstance(chat_template, str):
        for markers, parser in _TEMPLATE_TOOL_PARSERS:
            if all(marker in chat_template for marker in markers):
                return parser
    added = tokenizer_config.get("added_tokens_decoder")
    if isinstance(added, dict):
        contents = {v.get("content") for v in added.values() if isinstance(v, dict)}
        if "<|tool_call_start|>" in contents and "<|tool_call_end|>" in contents:
            return "pythonic"
    return None


@functools.cache
def tool_parser_names() -> tuple[str, ...]:
    """The tool parsers mlx-lm ships (`mlx_lm/tool_parsers/<name>.py`), found without importing
    mlx-lm (which would import MLX): what a profile's `tool_parser` may name."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folders = [Path(location) / "tool_parsers" for location in spec.submodule_search_locations]
    return tuple(sorted(p.stem for folder in folders for p in folder.glob("*.py") if not p.stem.startswith("_")))


def names_code(config: dict[str, Any], tokenizer_config: dict[str, Any]) -> bool:
    return "model_file" in config or "auto_map" in config or "auto_map" in tokenizer_config


def load_problem(path: Path) -> str | None:
    """Why the runner would refuse to load the model folder (the checks it makes first, and
    the safetensors headers: sizes and offsets within each file), or None. Cheap (headers
    only, no MLX): the pool asks before it spawns or hands a spare the model."""
    config_path = path / "config.json"
    if not config_path.is_file():
        return f"{path} has no config.json: not a model folder"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        return f"config.json is not valid JSON: {exc}"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return f"{path} has no .safetensors weights"
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json)"
    for weight in weights:
        problem = _safetensors_problem(weight)
        if problem:
            return f"{weight.name} is not a valid safetensors file ({problem}): {weight}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                return "shorter than its header"
            (length,) = struct.unpack("<Q", prefix)
            if length == 0 or length > _HEADER_LIMIT or 8 + length > size:
                return f"a header length of {length} bytes in a file of {size}"
            header = json.loads(f.read(length))
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError:
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data = size - 8 - length
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data
        ):
            return f"tensor {name[:80]!r} lies outside the file"
    return None


def ships_code(path: Path) -> bool:
    """Whether the model's configs ask to run Python code shipped with it."""
    return names_code(read_json(path / "config.json"), read_json(path / "tokenizer_config.json"))
