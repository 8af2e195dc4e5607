"""`mlx/v1/embeddings`: one request validated, run on an embedding model's runner, audited.

The body is OpenAI's: `input` a string, a list of strings, a list of token ids or a list of
such lists (at most MAX_INPUTS, none empty); `encoding_format` `float` (default) or `base64`
(little-endian float32, as OpenAI sends it — the openai SDK asks for it and decodes it);
`dimensions` (shorter vectors, truncated and normalised again, for models trained for it);
`user` is accepted and ignored. Shape errors are 400s before anything is recorded; token ids
and lengths are checked against the loaded model (its vocabulary, its context) before the
runner sees them, and the runner checks again (strings are tokenized there).

The request goes through the same limits and pool as generation (`pool.use` with the
embedding kind: a chat model named here is a 400 on `model`, and an embedding model named in
chat is one too), and writes one audit record with its prompt tokens.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..audit import AuditLog
from ..auth import Actor
from ..errors import MLXError
from ..models.catalog import is_valid_model_id, scrub_paths
from ..pool import ModelPool, RunnerCrashed
from .limits import RequestLimits
from .request import InvalidParam

if TYPE_CHECKING:
    from ..backends import RemoteBackends

MAX_INPUTS = 2048
EMBEDDING_KINDS = ("embedding",)


class EmbeddingFailed(MLXError):
    status_code = 500
    reason = "server_error"


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


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_embeddings(body: dict[str, Any]) -> EmbeddingRequest:
    """The request from a body, or InvalidParam naming the field at fault."""
    model = body.get("model")
    if not is_valid_model_id(model):
        raise InvalidParam("model must be a model id such as 'org/name' or 'local/<folder>'", "model", "invalid_model")
    raw = body.get("input")
    if isinstance(raw, str) or (_token_list(raw) and raw):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(i, str) or _token_list(i) for i in raw):
        inputs = list(raw)
    else:
        raise InvalidParam(
            "input must be a string, a list of strings, a list of token ids or a list of token id lists",
            "input",
            "invalid_input",
        )
    if len(inputs) > MAX_INPUTS:
        raise InvalidParam(f"at most {MAX_INPUTS} inputs per request, not {len(inputs)}", "input", "too_many_inputs")
    empty = next((i for i, item in enumerate(inputs) if not item), None)
    if empty is not None:
        raise InvalidParam(f"input {empty} is empty", "input", "empty_input")
    bad = next((t for item in inputs if not isinstance(item, str) for t in item if t < 0), None)
    if bad is not None:
        raise InvalidParam(f"token id {bad} is negative", "input", "invalid_token_id")
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise InvalidParam("encoding_format must be 'float' or 'base64'", "encoding_format", "invalid_value")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidParam("dimensions must be a positive integer", "dimensions", "invalid_value")
    return EmbeddingRequest(model, inputs, encoding or "float", dimensions)


def _check_for_model(request: EmbeddingRequest, info: dict[str, Any]) -> None:
    """What the loaded model's figures (its runner's `ready` event) allow, before the runner
    sees the request: token ids inside the vocabulary, token lists inside the context, and
    `dimensions` only where the model may be shortened."""
    vocab, context = info.get("vocab_size"), info.get("context_length")
    for i, item in enumerate(request.inputs):
        if isinstance(item, str):
            continue
        if vocab and max(item) >= vocab:
            raise InvalidParam(
                f"input {i}: token id {max(item)} is outside this model's vocabulary (0 to {vocab - 1})",
                "input",
                "invalid_token_id",
            )
        if context and len(item) > context:
            raise InvalidParam(
                f"input {i} has {len(item)} tokens; this model takes at most {context}",
                "input",
                "context_length_exceeded",
            )
    full = info.get("dimensions")
    if request.dimensions is not None and request.dimensions != full:
        if not info.get("matryoshka"):
            raise InvalidParam(f"{request.model} does not support shorter embeddings (dimensions)", "dimensions")
        if full and request.dimensions > full:
            raise InvalidParam(f"dimensions must be at most {full} for {request.model}", "dimensions")


def _floats(data: str) -> list[float]:
    values = array.array("f", base64.b64decode(data))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EmbeddingService:
    def __init__(self, pool: ModelPool, audit: AuditLog, limits: RequestLimits, remote: RemoteBackends | None = None):
        self.pool = pool
        self.audit = audit
        self.limits = limits
        self.remote = remote

    async def embed(self, actor: Actor, endpoint: str, request: EmbeddingRequest, request_id: str) -> dict[str, Any]:
        """OpenAI's embeddings reply; one audit record whatever happens."""
        started = time.monotonic()
        status, error_type, prompt_tokens, model_id, backend = "error", None, 0, request.model, "local"
        try:
            remote = self.remote.resolve(request.model) if self.remote else None
            if remote is not None:
                backend = remote[0].name
                async with self.limits.admit(actor.user["username"], request.model):
                    answer = await remote[0].embed(request.upstream_body(), remote[1], request_id)
                usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
                prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
                status = "ok"
                return {**answer, "model": request.model}  # replies name our model id
            username = actor.user["username"]
            async with (
                self.limits.admit(username, request.model),
                self.pool.use(request.model, user=actor.user, kinds=EMBEDDING_KINDS) as model,
            ):
                model_id = model.model_id
                _check_for_model(request, model.runner.info)
                command = {"inputs": request.inputs, "dimensions": request.dimensions}
                vectors: list[str | None] = [None] * len(request.inputs)
                async with contextlib.aclosing(model.runner.embed(request_id, command)) as events:
                    async for event in events:
                        if event["ev"] == "embeddings":
                            for index, data in zip(event["index"], event["data"]):
                                vectors[index] = data
                        elif event["ev"] == "error":
                            error_type = event.get("code") or event["type"]
                            if event["type"] == "invalid_request_error":
                                raise InvalidParam(event["message"], event.get("param") or "input", event.get("code"))
                            raise EmbeddingFailed(
                                scrub_paths(event["message"]), reason=event.get("code") or "server_error"
                            )
                        elif event["ev"] == "done":
                            prompt_tokens = int(event.get("prompt_tokens") or 0)
            if any(v is None for v in vectors):
                raise EmbeddingFailed("the runner left inputs without an embedding")
            status = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            status, error_type = "cancelled", "client_disconnected"
            raise
        except RunnerCrashed as exc:
            error_type = "runner_crashed"
            raise EmbeddingFailed(str(exc), reason="runner_crashed") from None
        except MLXError as exc:
            error_type = error_type or getattr(exc, "code", None) or exc.reason
            raise
        finally:
            await asyncio.shield(
                self.audit.record(
                    "embeddings", status=status, request_id=request_id, user=actor.user["username"],
                    client=actor.client, endpoint=endpoint, model=model_id, prompt_tokens=prompt_tokens,
                    cached_tokens=0, completion_tokens=0, duration_ms=(time.monotonic() - started) * 1000,
                    error_type=error_type, backend=backend, **actor.context,
                )
            )  # fmt: skip
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": data if request.encoding_format == "base64" else _floats(data),
                }
                for i, data in enumerate(vectors)
            ],
            "model": model_id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
