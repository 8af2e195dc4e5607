"""Where local models are: `local/<dir>` in the model folders, `org/name` in the HF cache.

Model ids are validated strictly before they touch the file system: ASCII only, exactly
one slash, no `..`, no absolute paths.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import BadRequest

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
MODEL_ID_RE = re.compile(rf"{_PART}/{_PART}")
LOCAL_PREFIX = "local/"


def validate_model_id(model_id: object) -> str:
    if not isinstance(model_id, str) or not model_id.isascii() or not MODEL_ID_RE.fullmatch(model_id) or ".." in model_id:
        raise BadRequest(
            "model ids look like 'org/name' (ASCII letters, digits, '.', '_', '-'; "
            "models from the model folders are 'local/<folder name>')",
            reason="invalid_model_id",
        )
    return model_id


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files: the pool's memory estimate before a model is loaded."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


class ModelCatalog:
    def __init__(self, model_dirs: list[Path]):
        self.model_dirs = model_dirs

    def resolve(self, model_id: str) -> Path | None:
        """The folder holding a local model, or None (never downloads). Blocking: call off-loop."""
        validate_model_id(model_id)
        if model_id.startswith(LOCAL_PREFIX):
            name = model_id[len(LOCAL_PREFIX) :]
            for directory in self.model_dirs:
                candidate = directory / name
                if (candidate / "config.json").is_file():
                    return candidate
            return None
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(model_id, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None

    def local_ids(self) -> list[str]:
        """Ids of every model folder found in the model folders and the HF cache."""
        ids = []
        for directory in self.model_dirs:
            if directory.is_dir():
                ids += [f"{LOCAL_PREFIX}{p.name}" for p in sorted(directory.iterdir()) if (p / "config.json").is_file()]
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        try:
            cache = scan_cache_dir()
        except (CacheNotFound, OSError):
            return ids
        for repo in sorted(cache.repos, key=lambda r: r.repo_id):
            if repo.repo_type == "model" and any(
                f.file_name == "config.json" for rev in repo.revisions for f in rev.files
            ):
                ids.append(repo.repo_id)
        return ids
