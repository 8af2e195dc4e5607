"""Kernel-side Python: `connect()`, the client's typed errors and its rich results."""

from .client import (
    AuthenticationError,
    BatchJob,
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
from .jobs import EvaluationTable, Job
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
    UsageRows,
)

__all__ = [
    "AuthenticationError", "BatchJob", "Conflict", "EvaluationTable", "Job", "Download", "MLXClient", "MLXManagerError", "NotFound",
    "PermissionDenied", "ServerBusy", "ServerNotFound", "StructuredOutputError", "connect", "find_server",
    "AuditRecords", "ChatResult", "CompletionResult", "LocalModels", "PoolModels", "PoolStatus",
    "SearchResults", "ServerStatus", "Table", "TextResult", "UsageRows",
]  # fmt: skip
