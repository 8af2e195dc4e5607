"""What the generating wire formats read alike (chat completions and completions, Messages,
Responses), so that one body field means one thing whichever route it comes by."""

from __future__ import annotations

from typing import Any

from .models import MessagesRequest, OpenAISampling, ResponsesRequest, bias


def common_fields(fields: OpenAISampling | MessagesRequest | ResponsesRequest) -> dict[str, Any]:
    """The `InferenceRequest` fields every generating body names alike: the model, sampling (an
    unset temperature or top_p is 1.0, each API's default), seed, logit bias, keep_alive, speculative, stream."""
    return {
        "model": fields.model,
        "temperature": 1.0 if fields.temperature is None else fields.temperature,
        "top_p": 1.0 if fields.top_p is None else fields.top_p,
        "top_k": fields.top_k,
        "seed": fields.seed,
        "logit_bias": bias(fields.logit_bias),
        "keep_alive": fields.keep_alive,
        "speculative": fields.speculative,
        "stream": bool(fields.stream),
    }
