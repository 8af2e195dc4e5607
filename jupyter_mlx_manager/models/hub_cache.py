"""The Hugging Face cache, as huggingface_hub lays it out.

The cache is huggingface_hub's own `constants.HF_HUB_CACHE` (`HF_HUB_CACHE`, else
`$HF_HOME/hub`, else `~/.cache/huggingface/hub`). Those constants are read once, when
huggingface_hub is imported, so if the environment has changed since (a server started with
`HF_HOME=…` in a process that imported huggingface_hub before), `hub_cache_dir()` evaluates its
constants module afresh in a private copy. Cache folders are named by
`file_download.repo_folder_name`, and the cached repos are listed with `scan_cache_dir` (local
files only, no network).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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
