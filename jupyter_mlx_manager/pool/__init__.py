"""The model pool: runner processes, loading, keep-alive and eviction (server side)."""

from .pool import LoadedModel, ModelPool
from .runner_process import LoadFailed, RunnerCrashed, RunnerProcess

__all__ = ["LoadFailed", "LoadedModel", "ModelPool", "RunnerCrashed", "RunnerProcess"]
