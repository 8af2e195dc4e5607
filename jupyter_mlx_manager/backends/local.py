"""The local backend: models on this machine, each in a runner process held through the pool.

What the runner must never see is checked here, against the loaded model's own figures (its
`ready` event): token ids outside the vocabulary (MLX does no bounds checks), token lists
beyond the context, `dimensions` the model cannot give.

Each generation carries its prompt-cache scope (`cache_scope`): with `prompt_cache_scope`
"user" (the default) the user's id, so a cached prefix is reused only by the user who sent it
(nobody learns from timing what another user sent); with "shared", one scope for everyone.
Nothing in a request (`prompt_cache_key`, `metadata.user_id`) widens or narrows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from ..inference.request import InvalidParam, check_token_ids, prompt_text_chars
from ..inference.tokens import TokenCounter
from ..runner.protocol import EmbedCommand, SpeakCommand, TranscribeCommand
from .base import Backend, Event, HeldModel, LoadOptions

if TYPE_CHECKING:
    from ..inference.embeddings import EmbeddingRequest
    from ..inference.request import InferenceRequest
    from ..pool import ModelPool
    from ..pool.pool import LoadedModel


PROMPT_CACHE_SCOPES = ("user", "shared")


def cache_scope(scope: str, user: dict[str, Any]) -> str:
    """The runner's prompt-cache scope for a request of `user` under `prompt_cache_scope`."""
    return f"user:{user['id']}" if scope == "user" else ""


class LocalModel(HeldModel):
    def __init__(self, model: LoadedModel, scope: str):
        self.model_id = model.model_id
        self.info = model.runner.info
        self.runner = model.runner
        self.scope = scope

    def generate(self, request: InferenceRequest, request_id: str) -> AsyncIterator[Event]:
        _refuse_obviously_too_long(request, self.info.get("context_length"))
        command = request.runner_command(cache_scope=self.scope)
        check_token_ids({"prompt": command.prompt, "logit_bias": command.logit_bias}, self.info.get("vocab_size"))
        return self.runner.generate(request_id, command)

    def embed(self, request: EmbeddingRequest, request_id: str) -> AsyncIterator[Event]:
        _check_embedding(request, self.info)
        return self.runner.embed(request_id, EmbedCommand(inputs=request.inputs, dimensions=request.dimensions))

    def transcribe(self, command: dict[str, Any], request_id: str) -> AsyncIterator[Event]:
        return self.runner.transcribe(request_id, TranscribeCommand(**command))

    def speak(self, command: dict[str, Any], request_id: str) -> AsyncIterator[Event]:
        return self.runner.speak(request_id, SpeakCommand(**command))


class LocalBackend(Backend):
    name = "local"

    def __init__(self, pool: ModelPool, prompt_cache_scope: str = "user"):
        if prompt_cache_scope not in PROMPT_CACHE_SCOPES:
            raise ValueError(f"prompt_cache_scope must be one of {', '.join(PROMPT_CACHE_SCOPES)}")
        self.pool = pool
        self.prompt_cache_scope = prompt_cache_scope
        self.tokens = TokenCounter()

    @contextlib.asynccontextmanager
    async def hold(
        self, model_id: str, *, user: dict[str, Any], kinds: tuple[str, ...], keep_alive: float | None = None
    ) -> AsyncIterator[HeldModel]:
        async with self.pool.use(model_id, keep_alive, user=user, kinds=kinds) as model:
            yield LocalModel(model, cache_scope(self.prompt_cache_scope, user))

    async def load(self, model_id: str, *, user: dict[str, Any], options: LoadOptions) -> dict[str, Any]:
        loaded = await self.pool.load(model_id, user=user, **dataclasses.asdict(options))
        return loaded.status()

    async def unload(self, model_id: str, *, user: dict[str, Any], force: bool) -> dict[str, Any]:
        loaded = self.pool.get_loaded_model(model_id)
        await self.pool.unload(model_id, user=user, force=force)
        return {"model": loaded.model_id if loaded else model_id, "status": "unloaded"}

    async def available(self, model_id: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.pool.catalog.locate, model_id) is not None

    async def count_tokens(self, request: InferenceRequest) -> int:
        """With the model's own tokenizer and chat template, in this process (`tokenizers`, no
        runner, no MLX), off the event loop."""
        loop = asyncio.get_running_loop()
        folder = await loop.run_in_executor(None, self.pool.catalog.resolve, request.model)
        if folder is None:
            raise NotFound(f"model {request.model} is not on this machine", reason="model_not_found")
        return await loop.run_in_executor(None, self.tokens.count, folder, request.command())


# No tokenizer makes a token of more characters than this (long whitespace runs come closest).
MAX_CHARS_PER_TOKEN = 64


def _refuse_obviously_too_long(request: InferenceRequest, context: int | None) -> None:
    """A prompt whose text alone is beyond the context is refused before anything templates or
    tokenizes it, in the wording clients compact on."""
    chars = prompt_text_chars(request)
    if context and chars > context * MAX_CHARS_PER_TOKEN:
        least = chars // MAX_CHARS_PER_TOKEN
        raise InvalidParam(
            f"prompt is too long: {least} tokens > {context - 1} maximum (at least {least}: counted from its "
            f"{chars} characters; this model's maximum context length is {context} tokens)",
            request.param("messages" if request.kind == "chat" else "prompt"),
            "context_length_exceeded",
        )


def _check_embedding(request: EmbeddingRequest, info: dict[str, Any]) -> None:
    """Token ids inside the vocabulary, token lists inside the context, and `dimensions` only
    where the model may be shortened."""
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
