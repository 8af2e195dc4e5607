"""Where local models are: `local/<dir>` in the model folders, `adapter/<name>` in the adapters
folder, `org/name` in the HF cache (models/hub_cache.py). Ids are parsed by models/ids.py.

`locate()` finds a model's folder whatever the case of the id, answering with the id as the
folder spells it. Folders whose names differ only in case (possible on a case-sensitive file
system) are one model: the first, in the order the listing uses (model folders in order, names
sorted), is the one that id names; the others are not listed. A Hub model is local when a
snapshot of it holds a `config.json`; the download worker links `config.json` last, so a
half-downloaded model never counts.

`describe()` reads a model's characteristics from its files only (models/inspection.py), so
listing models is cheap and never imports MLX.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..auth.users import is_admin
from ..errors import Forbidden, MLXError, NotFound
from .hub_cache import cached_model_folders, hub_cache_dir, hub_repo_folder
from .ids import (
    ADAPTER_PREFIX,
    LOCAL_PREFIX,
    is_valid_model_id,
    model_key,
    parse_model_id,
    validate_model_id,
)
from .inspection import (
    DEMO_MARKER,
    adapter_base,
    chat_template_text,
    context_length,
    count_parameters,
    infer_tool_parser,
    names_code,
    quantization,
    read_json,
    safetensors_header,
)
from .kinds import missing_extra, model_kind


def for_user(info: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    """A model description as `user` may see it: the folder it lives in only for admins."""
    if is_admin(user):
        return info
    return {k: v for k, v in info.items() if k != "path"}


class DeleteFailed(MLXError):
    """The file system refused to remove a model (not the client's fault)."""

    status_code = 500
    reason = "delete_failed"


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
        parsed = parse_model_id(validate_model_id(model_id))
        if parsed.source == "folder":
            found = self._folder_model(parsed.name)
            return (LOCAL_PREFIX + found[1].name, found[1]) if found else None
        if parsed.source == "adapter":
            adapter = self._adapter_folder(parsed.name)
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
                and parse_model_id(repo_id).source == "hub"
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
        source = parse_model_id(model_id).source
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
        parsed = parse_model_id(validate_model_id(model_id))
        if parsed.source in ("folder", "adapter"):
            if parsed.source == "folder":
                found = self._folder_model(parsed.name)
            else:
                adapter = self._adapter_folder(parsed.name)
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
        if parsed.source == "hub":
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


def read_characteristics(path: Path) -> dict[str, Any]:
    config = read_json(path / "config.json")
    tokenizer_config = read_json(path / "tokenizer_config.json")
    weights = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    headers = [safetensors_header(w) for w in weights]
    parameters, by_dtype = count_parameters(headers, config)
    quant = quantization(config)
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
        "remote_code": names_code(config, tokenizer_config),
        "demo": (path / DEMO_MARKER).is_file(),
        "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(modified)) if modified else None,
    }
