"""Kernel-side Python: `connect()`, the client's typed errors and its rich results."""

from .client import (
    AuthenticationError,
    Conflict,
    Download,
    MLXClient,
    MLXManagerError,
    NotFound,
    PermissionDenied,
    ServerBusy,
    StructuredOutputError,
    connect,
)
from .discovery import ServerNotFound, find_server
from .results import (
    AuditRecords,
    ChatResult,
    CompletionResult,
    LocalModels,
    PoolModels,
    PoolStatus,
    SearchResults,
    ServerStatus,
    Table,
    TextResult,
)

__all__ = [
    "AuthenticationError", "Conflict", "Download", "MLXClient", "MLXManagerError", "NotFound",
    "PermissionDenied", "ServerBusy", "ServerNotFound", "StructuredOutputError", "connect", "find_server",
    "AuditRecords", "ChatResult", "CompletionResult", "LocalModels", "PoolModels", "PoolStatus",
    "SearchResults", "ServerStatus", "Table", "TextResult",
]  # fmt: skip
