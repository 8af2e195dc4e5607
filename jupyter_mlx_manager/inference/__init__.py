"""Inference, whatever the wire format: the request model, the one serving pipeline, the thin
services on it (generation, embeddings, audio), limits."""

from .limits import RequestLimits, ServerBusy
from .pipeline import ServingFailed, ServingPipeline, Usage
from .request import InferenceRequest, InvalidParam
from .service import InferenceService

__all__ = [
    "InferenceRequest",
    "InferenceService",
    "InvalidParam",
    "RequestLimits",
    "ServerBusy",
    "ServingFailed",
    "ServingPipeline",
    "Usage",
]
