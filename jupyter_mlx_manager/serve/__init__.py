"""`jupyter mlx-manager serve`: the backend without a Jupyter server (standalone or as a JupyterHub service)."""

from .app import MLXServe, main, make_web_app

__all__ = ["MLXServe", "main", "make_web_app"]
