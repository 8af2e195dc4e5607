"""Every model backend behind one interface (`base.Backend`), and the one place that picks the
backend of a model id.

`local.py` serves models on this machine through the pool's runners; `remote.py` serves
`remote/<backend>/<upstream id>` from OpenAI-compatible upstreams. (`pool_url` is not a
backend: it is a deployment mode in which a whole server forwards `mlx/…` to another one.)
"""

from __future__ import annotations

from typing import Any

from .base import Backend, HeldModel
from .local import LocalBackend
from .remote import RemoteBackend, RemoteBackends, UpstreamUnavailable, parse_backends


class Backends:
    """The local backend and the remote ones, chosen by model id."""

    def __init__(self, local: LocalBackend, remote: RemoteBackends):
        self.local = local
        self.remote = remote

    def resolve(self, model_id: Any) -> Backend:
        """The backend serving `model_id` (the local one for anything not `remote/…`, which
        validates it); 404 for a remote id naming no configured backend."""
        return self.remote.resolve(model_id) or self.local


__all__ = [
    "Backend",
    "Backends",
    "HeldModel",
    "LocalBackend",
    "RemoteBackend",
    "RemoteBackends",
    "UpstreamUnavailable",
    "parse_backends",
]
