"""OpenAI's Files and Batch API: uploaded files and background batches of requests."""

from .files import FileStore
from .lines import LineRunner
from .service import BatchService

__all__ = ["BatchService", "FileStore", "LineRunner"]
