"""Workbench jobs: fine-tune (mlx-lm's tuner), evaluate and convert (mlx-lm's converter), each
in its own child process, its memory counted in the pool's budget."""

from .service import JobService
from .specs import JobSpecs

__all__ = ["JobService", "JobSpecs"]
