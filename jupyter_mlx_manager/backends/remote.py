"""Remote backends: models served by another OpenAI-compatible server, behind our edge.

A remote model `remote/<backend>/<upstream id>` goes through the same limits and audit as a
local one (inference/pipeline.py); only the generation happens elsewhere. The one internal
request is sent upstream as a streamed chat completion (or completion), and the upstream's
SSE chunks are translated, as they arrive, into the runner's events (`started`, `text`,
`reasoning`, `tool_call`, `done`), so every protocol we serve renders them unchanged.

Health is a small circuit breaker: a failed connect (or discovery) marks a backend down, and
while down it is not tried again until a back-off (1 s doubling to at most 30 s) has passed,
so a dead upstream costs a request one immediate 502, never a connect timeout each.

The upstream key is read from an environment variable at start and travels only in the
`Authorization` header to that upstream: it is never shown, and is scrubbed from every
upstream message we pass on or log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from logging import Logger
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import BadRequest, MLXError, NotFound
from ..inference.request import InferenceRequest, InvalidParam
from ..models.ids import is_remote_id
from ..models.kinds import GENERATIVE_KINDS
from .base import Backend, Event, HeldModel, LoadOptions

if TYPE_CHECKING:
    from ..inference.embeddings import EmbeddingRequest

REMOTE_PREFIX = "remote/"
CONNECT_TIMEOUT = 10.0  # SPEC: an unreachable upstream is a 502 within this, never a hang
READ_TIMEOUT = 600.0  # a long prefill upstream may send nothing for a while
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
DISCOVERY_TTL = 60.0
LIST_WAIT = 2.0  # a slow discovery never holds up a listing for longer than this
MAX_ERROR_BYTES = 64 * 1024
MAX_EMBEDDINGS_BYTES = 256 * 1024 * 1024  # 2,048 inputs × 4,096 dimensions as JSON floats fit
GATEWAY_DOWN = (502, 503, 504)  # what a proxy in front of the engine answers when it is gone
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
ENTRY_KEYS = {"url", "api_key_env", "models"}
# What an OpenAI-compatible upstream is asked for here: the kinds its chat, completions and
# embeddings routes serve (the generative kinds and embedding models), never audio.
SERVED_KINDS = (*GENERATIVE_KINDS, "embedding")


class UpstreamUnavailable(MLXError):
    status_code = 502
    reason = "upstream_unavailable"


class UpstreamRefused(MLXError):
    """The upstream's own 4xx, passed on with its status and message."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None):
        self.status_code = status
        super().__init__(message, reason=reason, headers=headers)


@dataclass
class BackendConfig:
    url: str
    key: str | None
    models: list[str] | None


def parse_backends(value: Any, environ: Mapping[str, str]) -> dict[str, BackendConfig]:
    """`c.MLXManager.remote_backends` checked entry by entry (ValueError naming the entry at
    fault), with each key read from its environment variable."""
    if not isinstance(value, dict):
        raise ValueError("remote_backends must be a dict of backend name → {url, api_key_env, models}")
    out = {}
    for name, entry in value.items():
        where = f"remote_backends[{name!r}]"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValueError(f"{where}: a backend name is ASCII letters, digits, '.', '_', '-' (up to 64)")
        if name.lower() in out:
            raise ValueError(f"{where}: backend names are case-insensitive and must be unique")
        if not isinstance(entry, dict) or not set(entry) <= ENTRY_KEYS:
            raise ValueError(f"{where} must be a dict with keys from {sorted(ENTRY_KEYS)}")
        url = entry.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}.url must be an http(s) URL such as http://host:8000/v1")
        if httpx.URL(url).userinfo:  # URLs reach logs: a credential belongs in api_key_env
            raise ValueError(f"{where}.url must not hold a user or password; put the key in api_key_env")
        key_env, key = entry.get("api_key_env"), None
        if key_env is not None:
            if not isinstance(key_env, str) or not environ.get(key_env):
                raise ValueError(f"{where}.api_key_env names {key_env!r}, which is not a set environment variable")
            key = environ[key_env]
        models = entry.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and _valid_upstream(name, m) for m in models)
        ):
            raise ValueError(f"{where}.models must be a list of upstream model ids (letters, digits, ._:@+/-)")
        out[name.lower()] = BackendConfig(url.rstrip("/"), key, models)
    return out


def _valid_upstream(backend: str, upstream_id: str) -> bool:
    return is_remote_id(f"{REMOTE_PREFIX}{backend}/{upstream_id}")


def upstream_of(model_id: str) -> str:
    """`remote/<backend>/<upstream id>` → the upstream id."""
    return model_id[len(REMOTE_PREFIX) :].partition("/")[2]


def upstream_body(request: InferenceRequest, upstream_id: str) -> dict[str, Any]:
    """The internal request as an OpenAI chat completion (or completion) for the upstream,
    always streamed with usage, so tokens reach the audit and text reaches the client as it
    comes. `echo` (the prompt's logprobs, as lm-eval scores with) is refused rather than
    dropped: scores without it would be silently wrong."""
    if request.echo:
        raise InvalidParam("echo is not available for remote models", "echo", "not_supported_for_remote")
    body: dict[str, Any] = {
        "model": upstream_id,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    for name in ("seed", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.stop:
        body["stop"] = request.stop
    if request.logit_bias:
        body["logit_bias"] = request.logit_bias
    if request.kind == "completion":
        body["prompt"] = request.prompt
        return body
    body["messages"] = request.template_messages()
    if request.tools:
        body["tools"] = [tool.as_template() for tool in request.tools]
        choice = request.tool_choice
        body["tool_choice"] = choice if isinstance(choice, str) else {"type": "function", "function": choice}
    fmt = request.output_format
    if fmt is not None:
        body["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": fmt.name or "output", "schema": fmt.schema, "strict": True}}
            if fmt.type == "json_schema"
            else {"type": "json_object"}
        )
    if request.reasoning is not None:
        body["chat_template_kwargs"] = {"enable_thinking": request.reasoning}
    return body


class RemoteModel(HeldModel):
    """A model of an upstream, for one request: its operations go to the upstream."""

    def __init__(self, backend: RemoteBackend, model_id: str, upstream_id: str):
        self.backend = backend
        self.model_id = model_id
        self.upstream_id = upstream_id
        self.info: dict[str, Any] = {}

    def generate(self, request: InferenceRequest, request_id: str) -> AsyncIterator[Event]:
        return self.backend.generate(request, self.upstream_id, request_id)

    async def embed(self, request: EmbeddingRequest, request_id: str) -> AsyncIterator[Event]:
        """The upstream's whole reply as the runner's events: the vectors as it sent them
        (floats, or base64 when asked for), then its prompt tokens."""
        answer = await self.backend.embed(request.upstream_body(), self.upstream_id, request_id)
        items = [item for item in answer["data"] if isinstance(item, dict)]
        yield {
            "ev": "embeddings",
            "index": [item.get("index", i) for i, item in enumerate(items)],
            "data": [item.get("embedding") for item in items],
        }
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens")
        yield {"ev": "done", "prompt_tokens": tokens if isinstance(tokens, int) else 0}

    def transcribe(self, command: dict[str, Any], request_id: str) -> AsyncIterator[Event]:
        raise _no_audio()

    def speak(self, command: dict[str, Any], request_id: str) -> AsyncIterator[Event]:
        raise _no_audio()


def _no_audio() -> InvalidParam:
    return InvalidParam("audio is not available for remote models", "model", "model_kind_not_supported")


class RemoteBackend(Backend):
    """One upstream: its HTTP client, its models (configured, or discovered and cached) and
    its health."""

    def __init__(self, name: str, config: BackendConfig, log: Logger):
        self.name = name
        self.configured = config.models
        self.log = log
        self._key = config.key
        self.healthy = True
        self._backoff = 0.0
        self._retry_at = 0.0
        self._discovered: list[str] = []
        self._discovered_at = -math.inf
        self._discovery: asyncio.Task | None = None
        self.in_flight: collections.Counter[str] = collections.Counter()
        # No proxy variables or .netrc: the key goes to this URL and nowhere else.
        self.http = httpx.AsyncClient(
            base_url=config.url + "/",
            headers={"Authorization": f"Bearer {config.key}"} if config.key else {},
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            trust_env=False,
        )

    @property
    def health(self) -> str:
        return "up" if self.healthy else "down"

    def scrub(self, text: str) -> str:
        """Upstream text as we may show or log it: without the key, bounded."""
        if self._key:
            text = text.replace(self._key, "[key]")
        return text[:1000]

    # -- the circuit breaker -------------------------------------------------------------------
    def _may_try(self) -> bool:
        return self.healthy or time.monotonic() >= self._retry_at

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self.healthy and time.monotonic() < self._retry_at:
            return  # concurrent failures of one outage grow the back-off once
        self._backoff = min(MAX_BACKOFF, self._backoff * 2 or FIRST_BACKOFF)
        self._retry_at = time.monotonic() + self._backoff
        self.log.warning(
            "remote backend %s is down (%s: %s: %s); next try in %.0f s",
            self.name, what, type(exc).__name__, self.scrub(str(exc)), self._backoff,
        )  # fmt: skip
        self.healthy = False

    def _succeeded(self) -> None:
        if not self.healthy:
            self.log.info("remote backend %s is up again", self.name)
        self.healthy, self._backoff = True, 0.0

    def _unavailable(self) -> UpstreamUnavailable:
        wait = max(0.0, self._retry_at - time.monotonic())
        return UpstreamUnavailable(f"remote backend {self.name} is unavailable (next try in {wait:.0f} s)")

    # -- models --------------------------------------------------------------------------------
    async def models(self) -> list[str]:
        """Upstream ids: the configured list, else the last discovery (refreshed when stale,
        waiting for it at most LIST_WAIT seconds; a failure keeps the last list)."""
        if self.configured is not None:
            return self.configured
        if time.monotonic() - self._discovered_at > DISCOVERY_TTL and self._may_try():
            if self._discovery is None or self._discovery.done():
                self._discovery = asyncio.ensure_future(self._discover())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._discovery), LIST_WAIT)
        return self._discovered

    async def _discover(self) -> None:
        try:
            reply = await self.http.get("models")
            reply.raise_for_status()
            data = reply.json()["data"]
            ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self._failed("discovery", exc)
            return
        self._discovered = [i for i in ids if _valid_upstream(self.name, i)]
        self._discovered_at = time.monotonic()
        self._succeeded()

    def check_model(self, upstream_id: str) -> None:
        if self.configured is not None and upstream_id not in self.configured:
            raise NotFound(f"remote backend {self.name} does not serve {upstream_id}", reason="model_not_found")

    # -- the Backend interface -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def hold(
        self, model_id: str, *, user: dict[str, Any], kinds: tuple[str, ...], keep_alive: float | None = None
    ) -> AsyncIterator[HeldModel]:
        """Nothing to load or keep here: the upstream holds its models. Audio is not asked of
        an upstream (it speaks chat, completions and embeddings)."""
        if not set(kinds) & set(SERVED_KINDS):
            raise _no_audio()
        upstream_id = upstream_of(model_id)
        self.check_model(upstream_id)
        yield RemoteModel(self, model_id, upstream_id)

    async def load(self, model_id: str, *, user: dict[str, Any], options: LoadOptions) -> dict[str, Any]:
        if options.draft_model is not None or options.speculative is not None:
            raise InvalidParam(
                f"{model_id} is served by remote backend {self.name}: its speculative decoding is the upstream's",
                "draft_model" if options.draft_model is not None else "speculative",
                "not_supported_for_remote",
            )
        return self._nothing_to_do(model_id, "load")

    async def unload(self, model_id: str, *, user: dict[str, Any], force: bool) -> dict[str, Any]:
        return self._nothing_to_do(model_id, "unload")

    async def available(self, model_id: str) -> bool:
        upstream_id = upstream_of(model_id)
        return self._may_try() and (self.configured is None or upstream_id in self.configured)

    async def count_tokens(self, request: InferenceRequest) -> int:
        raise BadRequest("token counting is not available for remote models", reason="not_supported_for_remote")

    def _nothing_to_do(self, model_id: str, action: str) -> dict[str, Any]:
        """The answer to a load or unload of a remote model: nothing to do here, and why."""
        return {
            "model": model_id,
            "status": "remote",
            "backend": self.name,
            "health": self.health,
            "message": f"{model_id} is served by remote backend {self.name}: there is nothing to {action} here",
        }

    # -- generation ----------------------------------------------------------------------------
    async def generate(
        self, request: InferenceRequest, upstream_id: str, request_id: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The runner's events for one request, translated from the upstream's stream as each
        chunk arrives. Closing this generator (a client that left) closes the upstream stream."""
        path = "chat/completions" if request.kind == "chat" else "completions"
        started = time.monotonic()
        self.in_flight[upstream_id] += 1
        try:
            async with self._stream(path, upstream_body(request, upstream_id), request_id) as reply:
                yield {"ev": "started", "id": request_id, "prompt_tokens": 0, "cached_tokens": 0}
                translator = _Translator(request_id, started, self.scrub)
                try:
                    async for line in reply.aiter_lines():
                        for event in translator.feed(line):
                            yield event
                        if translator.ended:
                            break
                except httpx.HTTPError as exc:  # headers are out: the handler reports it in-band
                    self._failed("stream", exc)
                    raise self._unavailable() from None
                for event in translator.finish():
                    yield event
        finally:
            self.in_flight[upstream_id] -= 1
            if not self.in_flight[upstream_id]:
                del self.in_flight[upstream_id]

    async def embed(self, body: dict[str, Any], upstream_id: str, request_id: str) -> dict[str, Any]:
        """The upstream's embeddings reply (OpenAI's JSON) for `body` (ours, less the model),
        read whole but bounded; the same health, errors and key handling as a generation."""
        async with self._stream("embeddings", {**body, "model": upstream_id}, request_id) as reply:
            raw = bytearray()
            try:
                async for chunk in reply.aiter_bytes():
                    raw += chunk
                    if len(raw) > MAX_EMBEDDINGS_BYTES:
                        raise UpstreamUnavailable(f"remote backend {self.name}: the embeddings reply is too large")
            except httpx.HTTPError as exc:
                self._failed("reply", exc)
                raise self._unavailable() from None
        try:
            answer = json.loads(raw)
            if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
                raise ValueError("no data list")
        except ValueError:
            raise UpstreamUnavailable(f"remote backend {self.name} sent an embeddings reply that is not one") from None
        return answer

    @contextlib.asynccontextmanager
    async def _stream(self, path: str, body: dict[str, Any], request_id: str) -> AsyncIterator[httpx.Response]:
        """The upstream's streamed reply, once it has answered 200; 502 at once while the
        backend is down and in back-off, or on a failed connect or a 5xx (a gateway's 502-504
        mark it down too); the upstream's 4xx as ours."""
        if not self._may_try():
            raise self._unavailable()
        request = self.http.build_request("POST", path, json=body, headers={"X-Request-ID": request_id})
        try:
            reply = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:  # refused, timed out, reset: httpx's text may name the URL
            self._failed("connect", exc)
            raise self._unavailable() from None
        try:
            if reply.status_code in GATEWAY_DOWN:
                self._failed("reply", UpstreamUnavailable(f"HTTP {reply.status_code}"))
            elif reply.status_code < 500:
                self._succeeded()  # it answers: up, whatever it thinks of this request
            if reply.status_code >= 400:
                raise await self._refusal(reply)
            yield reply
        finally:
            await asyncio.shield(reply.aclose())  # a second cancel must not leave the upstream running

    async def _refusal(self, reply: httpx.Response) -> MLXError:
        raw = b""
        async for chunk in reply.aiter_bytes():
            raw += chunk
            if len(raw) > MAX_ERROR_BYTES:
                break
        message, param, code = _error_fields(raw, reply.status_code)
        message = f"remote backend {self.name}: {self.scrub(message)}"
        status = reply.status_code
        if status >= 500 or status in (401, 403):  # its failure, or our key refused: not the client's fault
            return UpstreamUnavailable(f"{message} (HTTP {status})")
        if status == 400:
            return InvalidParam(message, param, code)
        if status == 404:
            return NotFound(message, reason="model_not_found")
        headers = {"Retry-After": reply.headers["Retry-After"]} if "Retry-After" in reply.headers else None
        return UpstreamRefused(status, message, code or "upstream_refused", headers)

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        await self.http.aclose()


def _error_fields(raw: bytes, status: int) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an upstream error body: OpenAI's `{"error": {…}}`, vLLM's flat
    `{"message", …}`, mlx_lm.server's `{"error": "…"}`, FastAPI's `{"detail": …}`, or text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or f"HTTP {status}", None, None
    if not isinstance(body, dict):
        return str(body), None, None
    error = body.get("error", body)
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error)
        param, code = error.get("param"), error.get("code")
        return str(message), param if isinstance(param, str) else None, code if isinstance(code, str) else None
    return str(error), None, None


class _Translator:
    """OpenAI stream chunks (one SSE line at a time) → the runner's events. Tool calls arrive
    in pieces and are emitted whole, each when the upstream ends its turn."""

    def __init__(self, request_id: str, started: float, scrub: Callable[[str], str]):
        self.id = request_id
        self.started = started
        self.scrub = scrub
        self.first_at: float | None = None
        self.chunks = 0  # text chunks seen: the completion tokens until the upstream's usage says
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.calls: dict[int, dict[str, str]] = {}
        self.ended = False

    def feed(self, line: str) -> list[dict[str, Any]]:
        if not line.startswith("data:"):
            return []  # comments (keep-alives), event names, blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            self.ended = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            return []
        if not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("error"), dict):  # an in-band error after headers
            raise UpstreamUnavailable(
                f"the upstream failed mid-stream: {self.scrub(str(chunk['error'].get('message')))}"
            )
        events = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                events.append(self._text("reasoning", reasoning))
            text = delta.get("content") if "delta" in choice else choice.get("text")
            if text:
                events.append(self._text("text", text))
            for call in delta.get("tool_calls") or []:
                self._add_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _text(self, kind: str, text: str) -> dict[str, Any]:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.chunks += 1
        return {"ev": kind, "id": self.id, "text": text, "completion_tokens": self.chunks}

    def _add_call(self, piece: dict[str, Any]) -> None:
        call = self.calls.setdefault(piece.get("index", len(self.calls)), {"name": "", "arguments": ""})
        function = piece.get("function") or {}
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""
        if self.first_at is None:
            self.first_at = time.monotonic()

    def finish(self) -> list[dict[str, Any]]:
        """The tool calls, then `done` with the upstream's usage (our chunk count without it)."""
        events = [{"ev": "tool_call", "id": self.id, "call": self.calls[i]} for i in sorted(self.calls)]
        usage = self.usage
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reason = self.finish_reason or "stop"
        if reason == "stop" and self.calls:
            reason = "tool_calls"
        events.append(
            {
                "ev": "done",
                "id": self.id,
                "finish_reason": reason,
                "prompt_tokens": usage.get("prompt_tokens") or 0,
                "cached_tokens": cached,
                "completion_tokens": usage.get("completion_tokens") or self.chunks,
                "ttft_ms": None if self.first_at is None else (self.first_at - self.started) * 1000,
            }
        )
        return events


class RemoteBackends:
    """Every configured backend, by name (case-insensitive)."""

    def __init__(self, configs: dict[str, BackendConfig], log: Logger):
        self.backends = {name: RemoteBackend(name, config, log) for name, config in configs.items()}

    def resolve(self, model_id: str) -> RemoteBackend | None:
        """The backend of a remote model id; None for a local id; 404 for a remote id naming no
        backend."""
        if not is_remote_id(model_id):
            return None
        name = model_id[len(REMOTE_PREFIX) :].partition("/")[0]
        backend = self.backends.get(name.lower())
        if backend is None:
            raise NotFound(
                f"there is no remote backend {name!r} (c.MLXManager.remote_backends)", reason="model_not_found"
            )
        return backend

    async def _listed(self) -> list[tuple[RemoteBackend, str]]:
        lists = await asyncio.gather(*(b.models() for b in self.backends.values()))
        return [(b, i) for b, ids in zip(self.backends.values(), lists, strict=True) for i in ids]

    async def model_entries(self) -> list[dict[str, Any]]:
        """Entries of `GET mlx/v1/models`."""
        return [
            {"id": f"{REMOTE_PREFIX}{b.name}/{i}", "object": "model", "created": 0, "owned_by": b.name,
             "backend": b.name, "health": b.health}
            for b, i in await self._listed()
        ]  # fmt: skip

    async def pool_entries(self) -> list[dict[str, Any]]:
        """Entries of `mlx/api/pool`'s models: always available, no memory here."""
        return [
            {"model": f"{REMOTE_PREFIX}{b.name}/{i}", "status": "remote", "backend": b.name, "health": b.health,
             "pinned": False, "keep_alive": -1, "expires_at": None, "memory_bytes": 0, "in_flight": b.in_flight[i]}
            for b, i in await self._listed()
        ]  # fmt: skip

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.backends.values()))


__all__ = ["RemoteBackend", "RemoteBackends", "RemoteModel", "UpstreamUnavailable", "parse_backends"]
