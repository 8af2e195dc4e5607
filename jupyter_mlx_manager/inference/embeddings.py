"""`mlx/v1/embeddings`: one request validated, run on an embedding model's runner, audited.

The body is OpenAI's: `input` a string, a list of strings, a list of token ids or a list of
such lists (at most MAX_EMBEDDING_INPUTS, none empty); `encoding_format` `float` (default) or `base64`
(little-endian float32, as OpenAI sends it — the openai SDK asks for it and decodes it);
`dimensions` (shorter vectors, truncated and normalised again, for models trained for it);
`user` is accepted and ignored. Shape errors are 400s before anything is recorded; token ids
and lengths are checked against the loaded model (its vocabulary, its context) by the local
backend before the runner sees them, and the runner checks again (strings are tokenized there).

The request goes through the one serving pipeline with the embedding kind (a chat model named
here is a 400 on `model`, and an embedding model named in chat is one too), and writes one
audit record with its prompt tokens.
"""

from __future__ import annotations

import array
import base64
import sys
from dataclasses import dataclass
from typing import Any

from ..auth import Actor
from ..models.ids import is_valid_model_id
from ..protocols.models import EMBEDDINGS_INPUT_MESSAGE, MODEL_ID_MESSAGE, EmbeddingsRequest, read, token_ids
from .pipeline import ServingFailed, ServingPipeline
from .request import MAX_EMBEDDING_INPUTS, InvalidParam

EMBEDDING_KINDS = ("embedding",)


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    encoding_format: str = "float"
    dimensions: int | None = None

    def upstream_body(self) -> dict[str, Any]:
        """This request as an OpenAI embeddings body for a remote backend (its model id apart)."""
        body: dict[str, Any] = {"input": self.inputs, "encoding_format": self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body


def parse_embeddings(body: dict[str, Any]) -> EmbeddingRequest:
    """The request from a body (protocols/models.py), or InvalidParam naming the field at fault."""
    fields = read(EmbeddingsRequest, body)
    if not is_valid_model_id(fields.model):
        raise InvalidParam(MODEL_ID_MESSAGE, "model", "invalid_model")
    raw = fields.input
    ids = token_ids(raw)
    if isinstance(raw, str) or ids:
        inputs = [raw if ids is None else ids]
    else:  # a list of inputs, each read once
        inputs = [i if isinstance(i, str) else token_ids(i) for i in raw] if isinstance(raw, list) else []
    if not inputs or any(i is None for i in inputs):
        raise InvalidParam(EMBEDDINGS_INPUT_MESSAGE, "input", "invalid_input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidParam(
            f"at most {MAX_EMBEDDING_INPUTS} inputs per request, not {len(inputs)}", "input", "too_many_inputs"
        )
    empty = next((i for i, item in enumerate(inputs) if not item), None)
    if empty is not None:
        raise InvalidParam(f"input {empty} is empty", "input", "empty_input")
    bad = next((min(item) for item in inputs if not isinstance(item, str) and min(item) < 0), None)
    if bad is not None:
        raise InvalidParam(f"token id {bad} is negative", "input", "invalid_token_id")
    return EmbeddingRequest(fields.model, inputs, fields.encoding_format or "float", fields.dimensions)


def _floats(data: str) -> list[float]:
    values = array.array("f", base64.b64decode(data))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EmbeddingService:
    """Embeddings on the one serving pipeline: an embedding model's vectors, in OpenAI's reply."""

    def __init__(self, pipeline: ServingPipeline):
        self.pipeline = pipeline

    async def embed(
        self, actor: Actor, endpoint: str, request: EmbeddingRequest, request_id: str, priority: str = "interactive"
    ) -> dict[str, Any]:
        vectors: list[Any] = [None] * len(request.inputs)
        async with self.pipeline.serve(
            actor, endpoint, request.model, request_id, kinds=EMBEDDING_KINDS, priority=priority
        ) as call:
            async for event in call.events(call.model.embed(request, request_id), lambda name: name or "input"):
                if event["ev"] == "embeddings":
                    for index, data in zip(event["index"], event["data"]):
                        vectors[index] = data
            if any(v is None for v in vectors):
                raise ServingFailed("the backend left inputs without an embedding")
            model_id, prompt_tokens = call.model.model_id, call.usage.prompt_tokens
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    # A runner sends base64 float32; an upstream sends what it was asked for.
                    "embedding": _floats(data)
                    if isinstance(data, str) and request.encoding_format == "float"
                    else data,
                }
                for i, data in enumerate(vectors)
            ],
            "model": model_id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
