"""The one interface every model backend implements, and the one place a model id picks one.

A backend serves model ids: the local one (runners in the pool) every id that is not
`remote/…`, each remote one the ids of its upstream. The serving pipeline holds a model of a
backend for one request (`hold`), then runs one operation on the held model: `generate`,
`embed`, `transcribe` or `speak`. Each yields the runner's event vocabulary (`started`,
`text`, `reasoning`, `tool_call`, `embeddings`, `transcription`, `audio`, `error`, `done`),
so nothing above a backend knows where a model runs. Closing an operation's event stream
cancels it (a local runner gets `cancel`; a remote stream is closed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runner.protocol import RequestEvent

if TYPE_CHECKING:
    from ..inference.embeddings import EmbeddingRequest
    from ..inference.request import InferenceRequest

Event = RequestEvent  # the runner's request events (runner/protocol.py), whatever the backend


@dataclass(frozen=True)
class LoadOptions:
    """What a load asks besides the model: a pin and a keep-alive (the pool's rules decide who
    may), and speculative decoding: `draft_model` (a local model id) or `speculative`
    ("prompt_lookup")."""

    pin: bool | None = None
    keep_alive: float | None = None
    draft_model: str | None = None
    speculative: str | None = None


class HeldModel(ABC):
    """A model held for one request: it is not evicted or unloaded (without `force`) while held."""

    model_id: str  # the id the backend knows it by (canonical case for local models)
    info: dict[str, Any]  # what the backend knows of it: vocab_size, context_length, dimensions, …

    @abstractmethod
    def generate(self, request: InferenceRequest, request_id: str) -> AsyncIterator[Event]: ...

    @abstractmethod
    def embed(self, request: EmbeddingRequest, request_id: str) -> AsyncIterator[Event]: ...

    @abstractmethod
    def transcribe(self, command: dict[str, Any], request_id: str) -> AsyncIterator[Event]: ...

    @abstractmethod
    def speak(self, command: dict[str, Any], request_id: str) -> AsyncIterator[Event]: ...


class Backend(ABC):
    name: str  # `local`, or the remote backend's name (the audit's `backend`)

    @abstractmethod
    def hold(
        self, model_id: str, *, user: dict[str, Any], kinds: tuple[str, ...], keep_alive: float | None = None
    ) -> AbstractAsyncContextManager[HeldModel]:
        """The model held for one request of `user` (loaded first where that is needed); a
        model of another kind than the endpoint's `kinds` is a 400 on `model`."""

    @abstractmethod
    async def load(self, model_id: str, *, user: dict[str, Any], options: LoadOptions) -> dict[str, Any]:
        """`mlx/api/pool/load`: the model's status afterwards."""

    @abstractmethod
    async def unload(self, model_id: str, *, user: dict[str, Any], force: bool) -> dict[str, Any]:
        """`mlx/api/pool/unload`: what became of the model."""

    @abstractmethod
    async def available(self, model_id: str) -> bool:
        """Whether the model can serve now (on disk; an upstream that is up): a profile's
        ordered models fall through to the next one otherwise."""

    @abstractmethod
    async def count_tokens(self, request: InferenceRequest) -> int:
        """The prompt tokens of a request, as `usage` would count them, without generating."""
