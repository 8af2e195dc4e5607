"""Model downloads from the Hugging Face Hub into the standard HF cache.

`DownloadManager` (the server-side service) is imported lazily, so the worker process
(`python -m jupyter_mlx_manager.downloads.worker`) does not load the server's modules.
"""

from __future__ import annotations

__all__ = ["DownloadManager"]


def __getattr__(name: str):
    if name == "DownloadManager":
        from .manager import DownloadManager

        return DownloadManager
    raise AttributeError(name)
