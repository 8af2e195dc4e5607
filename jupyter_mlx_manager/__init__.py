"""jupyter-mlx-manager: find, download, load, share and audit local MLX language models in Jupyter."""

from ._version import __version__

__all__ = ["__version__", "connect"]


def connect(url: str | None = None, token: str | None = None):
    """A client for the Jupyter server this kernel runs under (see `jupyter_mlx_manager.client`)."""
    from .client import connect as _connect

    return _connect(url, token)


def _jupyter_server_extension_points():
    from .app import MLXManager

    return [{"module": "jupyter_mlx_manager", "app": MLXManager}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyter-mlx-manager"}]
