"""The embedding runner's one MLX thread (`python -m jupyter_mlx_manager.runner PATH --kind embedding`).

It loads the model with mlx-embeddings (its own model classes and tokenizer loading; a model
that ships code is refused first, as for text models) and answers `embed` commands
(protocol.EmbedCommand) with `embeddings` events, then `done` (or one `error`). Inputs are
checked before anything reaches MLX: strings are tokenized here (with the tokenizer's special tokens, as the model was
trained), token lists are used as given; every id must be below the vocabulary size (MLX does
no bounds checks) and no input may be longer than the model's context.

Batching: a request's inputs are sorted by length and run `batch_size` at a time (padded to
the longest in the batch, with an attention mask), so a list of short and long texts wastes
little on padding; each batch's vectors go out in their own event, which keeps lines small
and lets the server's watchdog see progress on a request of thousands of inputs. Vectors are
the model's pooled, normalised output (`text_embeds`), as float32, base64 of little-endian
bytes (OpenAI's base64 encoding). `dimensions` truncates them and normalises again
(Matryoshka models; the server allows it only where the model declares it).

Requests run one at a time in arrival order (serial.py: one forward pass over a batch is
already the unit of work); a cancel drops a queued request or stops a running one between
batches.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .engine import vocab_size_of
from .protocol import EmbedCommand
from .serial import Emit, Invalid, SerialEngine

MAX_INPUTS = 2048
BATCH_SIZE = 32
BATCH_TOKENS = 16384  # padded tokens per forward pass at most: bounds activation memory


class EmbeddingEngine(SerialEngine):
    def __init__(self, model_path: Path, emit: Emit, kind: str = "embedding", batch_size: int = BATCH_SIZE):
        super().__init__(model_path, emit, kind)
        self.batch_size = max(1, batch_size)

    def load(self, config: dict[str, Any]) -> dict[str, Any]:
        from mlx_embeddings import load

        from ..models.inspection import context_length, read_json

        self.model, tokenizer = load(str(self.model_path))
        self.tokenizer = getattr(tokenizer, "_tokenizer", tokenizer)
        self.vocab_size = vocab_size_of(self.model) or int(config.get("vocab_size") or 0) or None
        self.context_length = context_length(config, read_json(self.model_path / "tokenizer_config.json"))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) and 0 <= pad < (self.vocab_size or pad + 1) else 0
        self.dimensions = int(self._forward([[self.pad_id]]).shape[-1])
        self.matryoshka = bool(matryoshka_dimensions(self.model_path))
        return {
            "context_length": self.context_length, "vocab_size": self.vocab_size, "dimensions": self.dimensions,
            "matryoshka": self.matryoshka,
        }  # fmt: skip

    def handlers(self) -> dict[str, Callable[[EmbedCommand], None]]:
        return {"embed": self._embed}

    def _embed(self, command: EmbedCommand) -> None:
        rid = command.id
        try:
            tokens = self._tokens(command.inputs)
            dimensions = self._dimensions(command.dimensions)
        except Invalid as exc:
            self.error(rid, str(exc), "invalid_request_error", exc.code, exc.param)
            return
        started = time.perf_counter()
        try:
            order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
            start = 0
            while start < len(order):
                if rid in self.cancelled:
                    self.emit({"ev": "done", "id": rid, "finish_reason": "cancelled", "prompt_tokens": 0})
                    return
                longest = len(tokens[order[min(start + self.batch_size, len(order)) - 1]])
                size = max(1, min(self.batch_size, BATCH_TOKENS // max(1, longest)))
                batch = order[start : start + size]
                vectors = np.asarray(self._forward([tokens[i] for i in batch], dimensions), dtype="<f4")
                data = [base64.b64encode(row.tobytes()).decode() for row in vectors]
                self.emit({"ev": "embeddings", "id": rid, "index": batch, "data": data})
                self.progress += 1
                start += size
        except Exception as exc:  # an MLX failure: this request fails, the runner serves on
            self.error(rid, f"{type(exc).__name__}: {exc}", "server_error", None)
            return
        self.emit(
            {
                "ev": "done", "id": rid, "finish_reason": "stop", "prompt_tokens": sum(map(len, tokens)),
                "dimensions": dimensions or self.dimensions, "duration_ms": (time.perf_counter() - started) * 1000,
            }
        )  # fmt: skip

    def _tokens(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Token ids of every input, checked (see the module docstring); their types are the command's."""
        if len(inputs) > MAX_INPUTS:
            raise Invalid(f"at most {MAX_INPUTS} inputs per request", "too_many_inputs", "input")
        texts = [i for i, item in enumerate(inputs) if isinstance(item, str)]
        encoded = self.tokenizer([inputs[i] for i in texts])["input_ids"] if texts else []
        out: list[list[int]] = []
        by_index = dict(zip(texts, encoded))
        for i, item in enumerate(inputs):
            ids = [int(t) for t in by_index[i]] if i in by_index else item
            if not ids:
                raise Invalid(f"input {i} is empty", "empty_input", "input")
            bad = next((t for t in ids if not 0 <= t < (self.vocab_size or 0)), None)
            if bad is not None:
                top = (self.vocab_size or 1) - 1
                raise Invalid(
                    f"input {i}: token id {bad} is outside the vocabulary (0 to {top})", "invalid_token_id", "input"
                )
            if len(ids) > self.context_length:
                raise Invalid(
                    f"input {i} has {len(ids)} tokens; this model takes at most {self.context_length}",
                    "context_length_exceeded",
                    "input",
                )
            out.append(ids)
        return out

    def _dimensions(self, value: int | None) -> int | None:
        if value is None or value == self.dimensions:
            return None
        if value > self.dimensions:
            raise Invalid(f"dimensions must be between 1 and {self.dimensions}", "invalid_field", "dimensions")
        if not self.matryoshka:
            raise Invalid("this model's embeddings cannot be shortened", "invalid_field", "dimensions")
        return value

    def _forward(self, rows: list[list[int]], dimensions: int | None = None) -> Any:
        """Pooled, normalised vectors of `rows` (padded right, masked), float32, evaluated."""
        mx = self.mx
        width = max(map(len, rows))
        ids = mx.array([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=mx.int32)
        mask = mx.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=mx.int32)
        out = self.model(ids, attention_mask=mask)
        vectors = getattr(out, "text_embeds", None)
        if vectors is None:
            raise RuntimeError("this model gives no pooled text embeddings (text_embeds)")
        vectors = vectors.astype(mx.float32)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
            vectors = vectors / mx.maximum(mx.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        mx.eval(vectors)
        return vectors


def matryoshka_dimensions(path: Path) -> list[int]:
    """The shorter sizes a model says its embeddings keep their meaning at (Matryoshka
    training): `matryoshka_dimensions` in config.json or config_sentence_transformers.json."""
    from ..models.inspection import read_json

    for name in ("config.json", "config_sentence_transformers.json"):
        value = read_json(path / name).get("matryoshka_dimensions")
        if isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value):
            return value
    return []
