"""Kernel-side Python: `connect()` and the client's typed errors."""

from .client import (
    AuthenticationError,
    Conflict,
    Download,
    MLXClient,
    MLXManagerError,
    NotFound,
    PermissionDenied,
    ServerBusy,
    connect,
)
from .discovery import ServerNotFound, find_server

__all__ = [
    "AuthenticationError", "Conflict", "Download", "MLXClient", "MLXManagerError", "NotFound",
    "PermissionDenied", "ServerBusy", "ServerNotFound", "connect", "find_server",
]  # fmt: skip
