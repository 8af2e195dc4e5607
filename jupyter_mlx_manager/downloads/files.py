"""Which files of a Hub repo an MLX model needs, which remote names are safe, and where
they go in the standard Hugging Face cache (`models--org--name/{blobs,snapshots,refs}`).

Shared by the server (`DownloadManager`) and the download worker process.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from pathlib import Path

# What mlx-lm itself fetches (`mlx_lm.utils.DEFAULT_ALLOW_PATTERNS`) except `*.py`: a model
# that needs its own Python code is refused by the pool anyway (trust_remote_code stays off).
ALLOW_PATTERNS = (
    "*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl", "*.jinja",
)  # fmt: skip
_SELECTED_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}(?:/[A-Za-z0-9_][A-Za-z0-9._-]{0,99}){0,3}")


def unsafe_reason(name: object) -> str | None:
    """Why a file name listed by the Hub could escape the model folder (None if it cannot)."""
    if not isinstance(name, str) or not name:
        return "empty or not a string"
    if len(name) > 1000:
        return "too long"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control characters"
    if "\\" in name:
        return "backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "'.', '..' or empty path segment"
    return None


def wanted(name: str) -> bool:
    """Top-level files an MLX model needs (weights, index, config, tokenizer, templates)."""
    if "/" in name or _SELECTED_NAME.fullmatch(name) is None:
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ALLOW_PATTERNS)


def valid_revision(revision: object) -> bool:
    """A branch, tag or commit: ASCII, no '..', usable as a relative path under refs/."""
    if not isinstance(revision, str) or not revision.isascii() or ".." in revision:
        return False
    return _REVISION.fullmatch(revision) is not None


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def existing_repo_id(cache_dir: Path, repo_id: str) -> str:
    """`repo_id` spelt as the cache folder already there spells it (Hub ids are
    case-insensitive: `Org/Name` and `org/name` are one repo, so one folder); else as given."""
    want = repo_folder(cache_dir, repo_id).name.lower()
    try:
        names = sorted(os.listdir(cache_dir))
    except OSError:
        return repo_id
    for name in names:
        if name.lower() == want and (cache_dir / name).is_dir():
            org, _, rest = name[len("models--") :].partition("--")
            return f"{org}/{rest}"
    return repo_id


def clean_repo_folder(cache_dir: Path, repo_id: str) -> int:
    """After a cancelled download: remove partial files and blobs no snapshot uses; remove the
    whole repo folder if nothing of it remains. Returns the bytes freed. Blocking."""
    folder = repo_folder(cache_dir, repo_id)
    if not folder.is_dir() or folder.is_symlink():
        return 0
    freed = 0
    used: set[str] = set()
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        for link in snapshots.rglob("*"):
            if link.is_symlink():
                used.add(os.path.basename(os.readlink(link)))
    blobs = folder / "blobs"
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if blob.is_file() and not blob.is_symlink() and blob.name not in used:
                freed += blob.stat().st_size
                blob.unlink(missing_ok=True)
    has_snapshot = snapshots.is_dir() and any(snapshots.iterdir())
    if not has_snapshot:
        shutil.rmtree(folder, ignore_errors=True)
    return freed
