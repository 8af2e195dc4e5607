"""Notebook widgets: `ModelPicker`, `ChatWidget`, `PoolMonitor`, `DownloadWidget`, `JobWidget`.

Long work (loading, downloading, generating) runs on the server; each widget follows it
from a background thread started in a copy of the cell's context, so ipykernel 7 routes
its updates to the right cell, and the cell itself never blocks.
"""

from .widgets import ChatWidget, DownloadWidget, JobWidget, ModelPicker, PoolMonitor

__all__ = ["ChatWidget", "DownloadWidget", "JobWidget", "ModelPicker", "PoolMonitor"]
