"""jupyter-mlx-manager: find, download, load, share and audit local MLX language models in Jupyter."""

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_server_extension_points():
    from .app import MLXManager

    return [{"module": "jupyter_mlx_manager", "app": MLXManager}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyter-mlx-manager"}]
