"""Inference, whatever the wire format: the request model, the service that runs it, limits."""

from .limits import RequestLimits, ServerBusy
from .request import InferenceRequest, InvalidParam
from .service import GenerationFailed, InferenceService, Usage

__all__ = [
    "GenerationFailed",
    "InferenceRequest",
    "InferenceService",
    "InvalidParam",
    "RequestLimits",
    "ServerBusy",
    "Usage",
]
