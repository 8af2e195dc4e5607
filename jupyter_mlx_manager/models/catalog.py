"""Where local models are: `local/<dir>` in the model folders, `org/name` in the HF cache.

Model ids are validated strictly before they touch the file system: ASCII only, exactly
one slash, no `..`, no absolute paths, and (for Hub ids, as huggingface_hub itself insists) no
`--`, so that every Hub id names exactly one cache folder `models--org--name`.

Ids are case-insensitive, as on the Hub: `model_key(id)` (the id in lower case) is what the
pool, the downloads and deletes compare, and `locate()` finds a model's folder whatever the
case of the id, answering with the id as the folder spells it. Folders whose names differ only
in case (possible on a case-sensitive file system) are one model: the first, in the order the
listing uses (model folders in order, names sorted), is the one that id names; the others are
not listed.

The HF cache is huggingface_hub's own `constants.HF_HUB_CACHE` (`HF_HUB_CACHE`, else
`$HF_HOME/hub`, else `~/.cache/huggingface/hub`), resolved when the catalog is made: those
constants are read once, when huggingface_hub is imported, so if the environment has changed
since (a server started with `HF_HOME=…` in a process that imported huggingface_hub before),
`hub_cache_dir()` evaluates huggingface_hub's constants module afresh in a private copy. Cache
folders are named by `file_download.repo_folder_name`, and the cached repos are listed with
`scan_cache_dir` (local files only, no network). A Hub model is local when a snapshot of it
holds a `config.json`; the download worker links `config.json` last, so a half-downloaded
model never counts.

`context_length(config, tokenizer_config)` is the one rule for a model's context: the catalog
reports it and the runner enforces it (imported there; this module never imports MLX).

`model_kind(path)` says which MLX package serves a model — `text` (mlx-lm), `vision` (mlx-vlm),
`embedding` (mlx-embeddings), `transcription` or `speech` (mlx-audio) — from its files, as those
packages pick a model class: the config's `model_type` (or mlx-audio's `architecture`) names a
module of theirs, `architectures` tells an encoder from a causal LM where a model type is served
by both, and a vision model ships an image processor. The tables below are those packages'
model modules (mlx-embeddings 0.1, mlx-audio 0.6), so a kind is known even where its package,
a wheel extra, is not installed: such models are listed, and refused with the extra's name.

`describe()` reads a model's characteristics from its files only — config.json, the JSON
headers of the safetensors files (never the tensors), tokenizer_config.json and chat
templates — so listing models is cheap and never imports MLX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any

from ..errors import BadRequest, Forbidden, MLXError, NotFound

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
MODEL_ID_RE = re.compile(rf"{_PART}/{_PART}")
LOCAL_PREFIX = "local/"
# Written by models/demo.py into each demo model: its weights are random (`"demo": true` in listings).
DEMO_MARKER = "mlx_manager_demo.json"
# `adapter/<name>`: a fine-tuned adapter (jobs/) in `<data_dir>/adapters/<name>`, served as its base
# model plus the adapter. Its folder holds the base's config and tokenizer files, mlx-lm's
# `adapters.safetensors` and `adapter_config.json`, and this marker naming the base.
ADAPTER_PREFIX = "adapter/"
ADAPTER_MARKER = "mlx_manager_adapter.json"
# `remote/<backend>/<upstream id>` (backends/remote.py): never a file here, so the upstream id may
# hold slashes (vLLM's `org/name`, the model path `mlx_lm.server` lists).
REMOTE_ID_RE = re.compile(rf"remote/{_PART}/[A-Za-z0-9._:@+/-]{{1,200}}", re.IGNORECASE)
_HEADER_LIMIT = 100 * 1024 * 1024


def is_local_id(model_id: str) -> bool:
    """`local/<folder>` (any case): a model of the model folders, never a Hub repo."""
    return model_id[: len(LOCAL_PREFIX)].lower() == LOCAL_PREFIX


def is_adapter_id(model_id: str) -> bool:
    return model_id[: len(ADAPTER_PREFIX)].lower() == ADAPTER_PREFIX


def is_remote_id(model_id: object) -> bool:
    return isinstance(model_id, str) and bool(REMOTE_ID_RE.fullmatch(model_id)) and ".." not in model_id


def is_valid_model_id(model_id: object) -> bool:
    """Any model id a request may name: local (`org/name`, `local/<folder>`) or remote."""
    return is_remote_id(model_id) or (
        isinstance(model_id, str)
        and model_id.isascii()
        and bool(MODEL_ID_RE.fullmatch(model_id))
        and ".." not in model_id
        # A Hub id with `--` would share its cache folder with another id (a--b/c, a/b--c).
        and ("--" not in model_id or is_local_id(model_id))
    )


def validate_model_id(model_id: object) -> str:
    """A local model id (what may name files here), else 400."""
    if is_remote_id(model_id) or not is_valid_model_id(model_id):
        raise BadRequest(
            "model ids look like 'org/name' (ASCII letters, digits, '.', '_', '-'; no '--' or '..'; "
            "models from the model folders are 'local/<folder name>')",
            reason="invalid_model_id",
        )
    return model_id


def model_key(model_id: str) -> str:
    """What identifies a model wherever ids are compared: ids that differ only in case name
    the same model (and, `--` being refused in Hub ids, the same HF cache folder)."""
    return model_id.lower()


# -- who is asking ------------------------------------------------------------------------------
# Services take `user`: our user dict (keys "username", "is_admin", …) or None, the server
# itself (expiry, eviction, resumed work), which may do what an admin may.


def is_admin(user: dict[str, Any] | None) -> bool:
    return user is None or bool(user.get("is_admin"))


def username_of(user: dict[str, Any] | None) -> str | None:
    return None if user is None else user.get("username")


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])~?/[\w.@+-]+(?:/[\w.@+-]+)*/?")


def scrub_paths(text: str, replacements: dict[str, str] | None = None) -> str:
    """`text` without the server's absolute paths: each key of `replacements` (a path) becomes
    its value (say, the model id), any other absolute path `<path>`."""
    for path, label in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
        if path:
            text = text.replace(path, label)
    return _ABSOLUTE_PATH.sub("<path>", text)


def for_user(info: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    """A model description as `user` may see it: the folder it lives in only for admins."""
    if is_admin(user):
        return info
    return {k: v for k, v in info.items() if k != "path"}


class DeleteFailed(MLXError):
    """The file system refused to remove a model (not the client's fault)."""

    status_code = 500
    reason = "delete_failed"


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


# The variables huggingface_hub's constants read for the cache folder.
_CACHE_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME", "HUGGINGFACE_CO_STAGING")
_cache_dirs: dict[tuple[str | None, ...], Path] = {}


def hub_cache_dir() -> Path:
    """huggingface_hub's `constants.HF_HUB_CACHE` for the environment as it is now.

    Its constants are computed once, when it is imported, which may be before the server's
    environment was set; so its constants module is run in a private copy (the shared one is
    untouched), once per distinct environment, and that copy's HF_HUB_CACHE is the answer."""
    from huggingface_hub import constants

    key = tuple(os.environ.get(name) for name in _CACHE_ENV)
    if key not in _cache_dirs:
        spec = importlib.util.find_spec(constants.__name__)
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
        _cache_dirs[key] = Path(fresh.HF_HUB_CACHE)
    return _cache_dirs[key]


def hub_repo_folder(cache_dir: Path, repo_id: str) -> Path:
    """The cache folder of a Hub model (`models--org--name`), as huggingface_hub names it."""
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_model_folders(cache_dir: Path) -> list[str]:
    """Names of the model repo folders in the HF cache (`scan_cache_dir`: local files only,
    never the network), sorted; repos it finds corrupted are left out."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, ValueError, OSError):
        return []
    return sorted(repo.repo_path.name for repo in info.repos if repo.repo_type == "model")


def _sorted_entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


class ModelCatalog:
    def __init__(self, model_dirs: list[Path], hub_cache: Path | None = None, adapter_dir: Path | None = None):
        self.model_dirs = model_dirs
        self.adapter_dir = adapter_dir
        self.hub_cache = Path(hub_cache) if hub_cache is not None else hub_cache_dir()
        self._described: dict[str, tuple[Any, dict[str, Any]]] = {}

    # -- finding models (blocking: call off the event loop) ---------------------------------------
    def resolve(self, model_id: str) -> Path | None:
        """The folder holding a local model, or None (never downloads)."""
        found = self.locate(model_id)
        return found[1] if found else None

    def locate(self, model_id: str) -> tuple[str, Path] | None:
        """(the id as its folder spells it, the folder) of a local model, whatever the case of
        `model_id`; None if it is not local."""
        validate_model_id(model_id)
        if is_local_id(model_id):
            found = self._folder_model(model_id[len(LOCAL_PREFIX) :])
            return (LOCAL_PREFIX + found[1].name, found[1]) if found else None
        if is_adapter_id(model_id):
            adapter = self._adapter_folder(model_id[len(ADAPTER_PREFIX) :])
            return (ADAPTER_PREFIX + adapter.name, adapter) if adapter else None
        folder = self._hub_folder(model_id)
        if folder is None:
            return None
        snapshot = self._hub_snapshot(folder)
        if snapshot is None:
            return None
        org, _, name = folder.name[len("models--") :].partition("--")
        return f"{org}/{name}", snapshot

    def kind(self, model_id: str) -> str | None:
        """The kind of a local model (None if it is not local). Blocking, cheap: its config."""
        path = self.resolve(model_id)
        return model_kind(path) if path is not None else None

    def canonical_id(self, model_id: str) -> str | None:
        found = self.locate(model_id)
        return found[0] if found else None

    def local_ids(self) -> list[str]:
        """Ids of every model folder found in the model folders and the HF cache."""
        ids = []
        seen = set()
        for directory in self.model_dirs:
            for entry in _sorted_entries(directory):
                model_id = f"{LOCAL_PREFIX}{entry}"
                if (
                    model_key(model_id) not in seen
                    and is_valid_model_id(model_id)
                    and (directory / entry / "config.json").is_file()
                ):
                    seen.add(model_key(model_id))
                    ids.append(model_id)
        if self.adapter_dir is not None:
            for entry in _sorted_entries(self.adapter_dir):
                if self._adapter_folder(entry) is not None:
                    ids.append(ADAPTER_PREFIX + entry)
        for entry in cached_model_folders(self.hub_cache):
            if not entry.startswith("models--"):
                continue
            org, sep, name = entry[len("models--") :].partition("--")
            repo_id = f"{org}/{name}"
            if (
                sep
                and is_valid_model_id(repo_id)
                and not is_local_id(repo_id)
                and model_key(repo_id) not in seen
                and self._hub_snapshot(self.hub_cache / entry) is not None
            ):
                seen.add(model_key(repo_id))
                ids.append(repo_id)
        return ids

    def _folder_model(self, name: str) -> tuple[Path, Path] | None:
        want = name.lower()
        for directory in self.model_dirs:
            for entry in _sorted_entries(directory):
                if (
                    entry.lower() == want
                    and is_valid_model_id(LOCAL_PREFIX + entry)
                    and (directory / entry / "config.json").is_file()
                ):
                    return directory, directory / entry
        return None

    def _adapter_folder(self, name: str) -> Path | None:
        if self.adapter_dir is None:
            return None
        want = name.lower()
        for entry in _sorted_entries(self.adapter_dir):
            folder = self.adapter_dir / entry
            if entry.lower() == want and is_valid_model_id(ADAPTER_PREFIX + entry) and adapter_base(folder):
                return folder
        return None

    def _hub_folder(self, repo_id: str) -> Path | None:
        """The cache folder of a Hub model with a complete snapshot, whatever the id's case."""
        want = hub_repo_folder(self.hub_cache, repo_id).name.lower()
        for entry in _sorted_entries(self.hub_cache):
            if entry.lower() == want and self._hub_snapshot(self.hub_cache / entry) is not None:
                return self.hub_cache / entry
        return None

    def _hub_snapshot(self, folder: Path) -> Path | None:
        snapshots = folder / "snapshots"
        if not snapshots.is_dir():
            return None
        try:
            commit = (folder / "refs" / "main").read_text().strip()
        except OSError:
            commit = ""
        if commit and re.fullmatch(r"[0-9a-f]{40}", commit) and (snapshots / commit / "config.json").is_file():
            return snapshots / commit
        try:
            complete = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
        except OSError:
            return None
        return max(complete, key=lambda s: s.stat().st_mtime) if complete else None

    # -- characteristics --------------------------------------------------------------------------
    def describe(self, model_id: str, user: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """What the files say about a local model (None if it is not local), as `user` may see
        it (the folder's path only for admins). Blocking."""
        found = self.locate(model_id)
        if found is None:
            return None
        model_id, path = found
        try:
            entries = sorted(path.iterdir(), key=lambda e: e.name)
            key = tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
        except OSError:
            key = None
        cached = self._described.get(model_key(model_id))
        if cached is not None and key is not None and cached[0] == (str(path), key):
            info = dict(cached[1])
        else:
            info = read_characteristics(path)
            self._described[model_key(model_id)] = ((str(path), key), info)
            info = dict(info)
        source = "folder" if is_local_id(model_id) else "adapter" if is_adapter_id(model_id) else "hub"
        info.update(id=model_id, source=source, path=str(path), revision=path.name if source == "hub" else None)
        if source == "adapter":
            info["base_model"] = (adapter_base(path) or {}).get("base")
        return for_user(info, user)

    def list_local(self, user: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        out = []
        for model_id in self.local_ids():
            info = self.describe(model_id, user)
            if info is not None:
                out.append(info)
        return out

    # -- deleting ---------------------------------------------------------------------------------
    def delete(self, model_id: str) -> int:
        """Remove a local model from disk; returns the bytes freed. Blocking.

        Hub models: the whole `models--org--name` folder of the cache (every revision).
        Folder models: the model's folder, or only the link if it is a symbolic link.
        Who may delete, and when, is `ModelPool.delete_model`'s business: call that.
        """
        validate_model_id(model_id)
        if is_local_id(model_id) or is_adapter_id(model_id):
            if is_local_id(model_id):
                found = self._folder_model(model_id[len(LOCAL_PREFIX) :])
            else:
                adapter = self._adapter_folder(model_id[len(ADAPTER_PREFIX) :])
                found = (self.adapter_dir, adapter) if adapter is not None else None
            if found is None:
                raise NotFound(f"model {model_id} is not on this machine", reason="model_not_found")
            directory, target = found
            if target.is_symlink():
                target.unlink()
                self._described.pop(model_key(model_id), None)
                return 0
            if target.resolve().parent != directory.resolve():
                raise Forbidden(f"{model_id} is not inside its model folder; not deleting it", reason="unsafe_path")
        else:
            target = self._hub_folder(model_id)
            if target is None:
                raise NotFound(f"model {model_id} is not on this machine", reason="model_not_found")
            if target.is_symlink() or target.resolve().parent != self.hub_cache.resolve():
                raise Forbidden(f"{model_id} is not inside the HF cache; not deleting it", reason="unsafe_path")
        freed = _tree_bytes(target, follow_links=False)
        try:
            shutil.rmtree(target)
        except PermissionError as exc:
            raise Forbidden(
                f"the server may not delete {model_id}: {exc.strerror} ({exc.filename})", reason="permission_denied"
            ) from None
        except OSError as exc:
            raise DeleteFailed(f"deleting {model_id} failed: {exc.strerror or exc} ({exc.filename})") from None
        if not is_local_id(model_id) and not is_adapter_id(model_id):
            shutil.rmtree(self.hub_cache / ".locks" / target.name, ignore_errors=True)
        self._described.pop(model_key(model_id), None)
        return freed


def _tree_bytes(path: Path, follow_links: bool = True) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat(follow_symlinks=follow_links).st_size
            except OSError:
                pass
    return total


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; {} if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_read_json = read_json


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


def _quantization(config: dict[str, Any]) -> dict[str, Any] | None:
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
    as_json = _read_json(path / "chat_template.json").get("chat_template")
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


def _names_code(config: dict[str, Any], tokenizer_config: dict[str, Any]) -> bool:
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
    return _names_code(_read_json(path / "config.json"), _read_json(path / "tokenizer_config.json"))


# -- kinds ---------------------------------------------------------------------------------------
KINDS = ("text", "vision", "embedding", "transcription", "speech")
GENERATIVE_KINDS = ("text", "vision")  # what chat, completions, Messages and Responses serve
# kind → (the package that serves it, the wheel extra that installs it)
KIND_PACKAGES = {
    "text": ("mlx_lm", None),
    "vision": ("mlx_vlm", "vision"),
    "embedding": ("mlx_embeddings", "embeddings"),
    "transcription": ("mlx_audio", "audio"),
    "speech": ("mlx_audio", "audio"),
}
# mlx_embeddings.models: encoders only it serves, and model types it shares with mlx-lm (decoder
# embedders such as Qwen3-Embedding, EmbeddingGemma), which are embedders only when no architecture
# is a generative head.
_ENCODER_TYPES = {"bert", "xlm_roberta", "modernbert", "siglip", "colqwen2_5", "colidefics3", "llama_bidirec"}
_SHARED_EMBEDDING_TYPES = {"qwen3", "gemma3_text", "lfm2", "qwen3_vl", "llama_nemotron_vl"}
_GENERATIVE_HEADS = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
# mlx_audio.stt.models and its MODEL_REMAPPING keys.
_TRANSCRIPTION_TYPES = {
    "canary", "cohere_asr", "fireredasr2", "fun_asr_nano", "glmasr", "glm", "granite_speech",
    "granite_speech5_ctc", "granite_speech_nar", "granite_speech_plus", "higgs_audio_3", "lasr_ctc", "mega_asr",
    "mimo_v2_asr", "ming_v3_asr", "mms", "moonshine", "moss_transcribe_diarize", "nemo", "nemotron_asr",
    "parakeet", "parakeet_tdt", "phonon", "phonon2", "qwen2_audio", "qwen3_asr", "sensevoice", "vibevoice_asr",
    "voxtral", "voxtral_realtime", "wav2vec", "wav2vec2", "whisper",
}  # fmt: skip
# mlx_audio.tts.models and its MODEL_REMAPPING keys, without the language-model backbones it also
# keeps there (llama, qwen3, dense), which it tells apart by the repo's name, not the config.
_SPEECH_TYPES = {
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
    config = _read_json(path / "config.json") if config is None else config
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    raw = config.get("model_type") or config.get("architecture") or text_config.get("model_type") or ""
    model_type = str(raw).lower().replace("-", "_")
    if model_type in _TRANSCRIPTION_TYPES or {"n_mels", "n_audio_ctx"} <= config.keys():  # mlx-whisper's layout
        return "transcription"
    if model_type in _SPEECH_TYPES:
        return "speech"
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    generative = any(a.endswith(_GENERATIVE_HEADS) for a in architectures)
    sentence_transformers = any((path / name).is_file() for name in _SENTENCE_TRANSFORMERS_FILES)
    if model_type in _ENCODER_TYPES or (
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
    package, extra = KIND_PACKAGES.get(kind, (None, None))
    if extra is not None and importlib.util.find_spec(package) is None:
        return f"{kind} models need {package}: pip install jupyter-mlx-manager[{extra}]"
    return None


class WrongKind(BadRequest):
    """The model exists but this endpoint (or this server) cannot serve its kind: a 400 naming
    the `model` field, so an SDK reports which argument was wrong."""

    reason = "invalid_request_error"

    def __init__(self, message: str, code: str = "model_kind_not_supported"):
        super().__init__(message)
        self.param = "model"
        self.code = code


def check_kind(model_id: str, kind: str, wanted: tuple[str, ...] | None = None) -> None:
    """WrongKind unless a model of `kind` can be served here (and, with `wanted`, is one of those)."""
    if wanted is not None and kind not in wanted:
        raise WrongKind(f"{model_id} is {with_article(kind)} model; this endpoint serves {' or '.join(wanted)} models")
    problem = missing_extra(kind)
    if problem:
        raise WrongKind(f"{model_id} cannot be served: {problem}", code="extra_not_installed")


def read_characteristics(path: Path) -> dict[str, Any]:
    config = _read_json(path / "config.json")
    tokenizer_config = _read_json(path / "tokenizer_config.json")
    weights = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    headers = [safetensors_header(w) for w in weights]
    parameters, by_dtype = count_parameters(headers, config)
    quant = _quantization(config)
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    template = chat_template_text(path, tokenizer_config)
    parser = infer_tool_parser(template, tokenizer_config)
    architectures = config.get("architectures") or text_config.get("architectures") or []
    floats = {k: v for k, v in by_dtype.items() if k in ("F32", "F16", "BF16", "F64")}
    dtype = config.get("torch_dtype") or config.get("dtype")
    if not isinstance(dtype, str):
        names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
        dtype = names[max(floats, key=floats.get)] if floats else None
    try:
        files = [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        modified = max((p.stat().st_mtime for p in files), default=None)
    except OSError:
        files, size, modified = [], 0, None
    kind = model_kind(path, config)
    return {
        "kind": kind,
        # Set when the kind's wheel extra is missing: the model is listed, not served.
        "unavailable": missing_extra(kind),
        "model_type": config.get("model_type") or text_config.get("model_type"),
        "architecture": architectures[0] if isinstance(architectures, list) and architectures else None,
        "parameters": parameters or None,
        "dtype": dtype,
        "quantization": quant,
        "context_length": context_length(config, tokenizer_config),
        "size_bytes": size,
        "files": len(files),
        "weight_files": len(weights),
        "chat_template": template is not None,
        "tool_calling": parser is not None,
        "tool_parser": parser,
        # Python code of its own (refused by the pool and the runner: trust_remote_code stays off).
        "remote_code": _names_code(config, tokenizer_config),
        "demo": (path / DEMO_MARKER).is_file(),
        "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(modified)) if modified else None,
    }
