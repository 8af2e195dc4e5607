"""`connect()`: the kernel-side client of the server's management and OpenAI APIs.

Long work stays on the server; the client follows it (download progress over SSE, shown
with `tqdm.auto`, so a notebook gets a widget bar).
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

from .discovery import ServerInfo, find_server
from .jobs import Job
from .results import (
    AuditRecords,
    ChatResult,
    CompletionResult,
    LocalModels,
    PoolStatus,
    SearchResults,
    ServerStatus,
    UsageRows,
)


class MLXManagerError(RuntimeError):
    """The server refused a request; `status`, `reason` and the server's message."""

    def __init__(self, status: int, message: str, reason: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.reason = status, message, reason


class AuthenticationError(MLXManagerError):
    """401: no valid credential."""


class PermissionDenied(MLXManagerError):
    """403: pending or disabled account, or an admin-only action."""


class NotFound(MLXManagerError):
    """404: no such model, download, user or token."""


class Conflict(MLXManagerError):
    """409: e.g. deleting a loaded model, removing the last admin."""


class ServerBusy(MLXManagerError):
    """429/503: throttled, or every loaded model is busy; try again later."""


class StructuredOutputError(ValueError):
    """A reply that does not parse or validate against the schema `map()` was given; `text`
    holds the reply (a `ChatResult`), `__cause__` the parser's or validator's error."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


EMBED_BATCH = 2048  # inputs per embeddings request: the server's limit

_ERRORS = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: ServerBusy,
    503: ServerBusy,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:500]}
    if "error" in body and isinstance(body["error"], dict):  # OpenAI envelope
        message, reason = body["error"].get("message", ""), body["error"].get("code")
    else:
        message, reason = body.get("message", ""), body.get("reason")
    raise _ERRORS.get(response.status_code, MLXManagerError)(response.status_code, message, reason)


def _transient(exc: BaseException) -> bool:
    """Worth another try: the server is restarting, unreachable for now, or busy."""
    if isinstance(exc, MLXManagerError):
        return isinstance(exc, ServerBusy) or exc.status >= 500
    return isinstance(exc, (httpx.TransportError, ValueError))  # ValueError: a garbled stream line


class Download:
    """A download running on the server: `progress` (latest record), `wait()`, `cancel()`.

    A background thread follows the server's progress stream (SSE). When the stream breaks
    (the server restarts, a proxy drops it) it asks for the record and follows again,
    backing off while the server cannot be reached; after `RECONNECT_SECONDS` of that it
    gives up, and `wait()` raises."""

    FINAL = ("completed", "failed", "cancelled")
    RECONNECT_SECONDS = 60.0
    _MIN_DELAY, _MAX_DELAY = 0.5, 5.0

    def __init__(self, client: MLXClient, record: dict[str, Any], show_progress: bool = True):
        self._client = client
        self.id = record["id"]
        self.progress = record
        #: Why following stopped before a final record (the last error), if it did.
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._closed = threading.Event()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._show = show_progress
        self._bar: Any = None
        self._thread = threading.Thread(target=self._follow, name=f"mlx-download-{self.id}", daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        """Following is over: a final record arrived, or the server could not be reached."""
        return self._done.is_set()

    def on_progress(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(record)` with every new record (on the follower's thread)."""
        self._listeners.append(callback)

    def _update(self, record: dict[str, Any]) -> bool:
        self.progress = record
        if self._show and self._bar is None and record.get("total_bytes"):
            # Only once the Hub has listed the files: a download that fails first shows no empty bar.
            from tqdm.auto import tqdm

            self._bar = tqdm(total=record["total_bytes"], unit="B", unit_scale=True, desc=record["repo_id"])
        if self._bar is not None:
            self._bar.update(record.get("downloaded_bytes", 0) - self._bar.n)
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:  # a listener's bug must not stop the follower
                pass
        return record.get("status") in self.FINAL

    def _follow(self) -> None:
        delay, lost_since = self._MIN_DELAY, None
        try:
            while not self._closed.is_set():
                received = 0
                try:
                    for event in self._client._sse(f"mlx/api/downloads/{self.id}/progress"):
                        received += 1
                        if self._update(event):
                            return
                    # the stream ended without a final record: ask for it
                    if self._update(self._client._get(f"mlx/api/downloads/{self.id}")):
                        return
                    lost_since = None
                except Exception as exc:
                    if not _transient(exc):
                        self.error = exc
                        return
                    now = time.monotonic()
                    lost_since = lost_since if lost_since is not None else now
                    if now - lost_since >= self.RECONNECT_SECONDS:
                        self.error = exc
                        return
                # follow again; back off while nothing comes through
                delay = self._MIN_DELAY if received else min(delay * 2, self._MAX_DELAY)
                self._closed.wait(delay)
        finally:
            if self._bar is not None:
                self._bar.close()
            self._done.set()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the download ends; raise if it failed or was cancelled, or if the
        server could not be reached for `RECONNECT_SECONDS`."""
        if not self._done.wait(timeout):  # blocks on the follower (the SSE stream)
            raise TimeoutError(f"download {self.id} still running")
        status = self.progress.get("status")
        if status not in self.FINAL:
            error = self.error
            if isinstance(error, MLXManagerError):
                raise error
            if error is None:  # close() stopped following
                raise MLXManagerError(0, f"stopped following download {self.id} ({status})", "closed")
            raise MLXManagerError(
                0, f"lost contact with the server following download {self.id}: {error!r}", "unreachable"
            ) from error
        if status != "completed":
            raise MLXManagerError(0, f"download {status}: {self.progress.get('error') or ''}", status)
        return self.progress

    def cancel(self) -> dict[str, Any]:
        self._client._request("DELETE", f"mlx/api/downloads/{self.id}")
        self._done.wait(10)
        return self.progress

    def close(self) -> None:
        """Stop following (the download goes on on the server)."""
        self._closed.set()

    def __repr__(self) -> str:
        p = self.progress
        return f"<Download {p.get('repo_id')} {p.get('status')} {p.get('downloaded_bytes', 0)}/{p.get('total_bytes', 0)} bytes>"


KERNEL_ID_HEADER = "X-MLX-Kernel-Id"
CELL_ID_HEADER = "X-MLX-Cell-Id"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what the server accepts (audit/attribution.py)


def kernel_id() -> str | None:
    """The id of the kernel this code runs in (from its connection file `kernel-<id>.json`),
    or None outside a kernel."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from ipykernel.connect import get_connection_file

        name = Path(get_connection_file()).name
    except Exception:
        return None
    match = re.fullmatch(r"kernel-(.+)\.json", name)
    return match.group(1) if match and _ID.fullmatch(match.group(1)) else None


def cell_id() -> str | None:
    """The id of the running cell: the `cellId` JupyterLab puts in the execute request's
    metadata (threads started by the cell see it too), or None."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent("shell") if kernel is not None else None
        value = ((parent or {}).get("metadata") or {}).get("cellId")
    except Exception:
        return None
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


class MLXClient:
    def __init__(self, server: ServerInfo, timeout: float = 600):
        self.server = server
        self.kernel_id = kernel_id()
        self._http = httpx.Client(
            base_url=server.url,
            headers=server.auth_header,
            timeout=timeout,
            event_hooks={"request": [self._attribute]},
        )

    def _attribute(self, request: httpx.Request) -> None:
        """Every request names this kernel and the running cell, so the server's audit knows
        the notebook (it checks that the kernel is one of the caller's sessions)."""
        if self.kernel_id is None:
            return
        request.headers[KERNEL_ID_HEADER] = self.kernel_id
        cell = cell_id()
        if cell is not None:
            request.headers[CELL_ID_HEADER] = cell
        else:
            request.headers.pop(CELL_ID_HEADER, None)

    def __repr__(self) -> str:
        return f"<MLXClient {self.server.url} ({self.server.source})>"

    # -- management API -----------------------------------------------------------------------
    def status(self) -> ServerStatus:
        """Version, device, memory and the pool in brief: a dict that displays as a table."""
        return ServerStatus(self._get("mlx/api/status"))

    def search(self, q: str = "", **filters: Any) -> SearchResults:
        """Hub search; filters: author, arch, quant, max_size_gb, sort, limit. A list of dicts
        that displays as a table (`.to_pandas()` with pandas)."""
        params = {k: v for k, v in {"q": q, **filters}.items() if v not in (None, "")}
        return SearchResults(self._get("mlx/api/models/search", params=params)["models"])

    def local_models(self) -> LocalModels:
        """The models on this machine: a list of dicts that displays as a table."""
        return LocalModels(self._get("mlx/api/models/local")["models"])

    def download(self, repo_id: str, wait: bool = True, *, revision: str | None = None, progress: bool = True):
        """Start (or join) a download on the server. `wait=True` blocks with a progress bar
        and returns the final record; `wait=False` returns a `Download` handle."""
        body = {"repo_id": repo_id} | ({"revision": revision} if revision else {})
        handle = Download(self, self._request("POST", "mlx/api/downloads", json=body), show_progress=progress)
        return handle.wait() if wait else handle

    def downloads(self) -> list[dict[str, Any]]:
        return self._get("mlx/api/downloads")["downloads"]

    def load(self, model: str, pin: bool = False, keep_alive: float | None = None) -> dict[str, Any]:
        # Only what the caller asks for: sending pin=false would ask to unpin an admin's pinned model.
        body = (
            {"model": model}
            | ({"pin": True} if pin else {})
            | ({"keep_alive": keep_alive} if keep_alive is not None else {})
        )
        return self._request("POST", "mlx/api/pool/load", json=body)

    def unload(self, model: str) -> dict[str, Any]:
        return self._request("POST", "mlx/api/pool/unload", json={"model": model})

    def delete_model(self, model: str, force: bool = False) -> dict[str, Any]:
        """Remove a local model from the server's disk (admins); a loaded one is refused (409)
        unless `force`, which unloads it first. Returns `{id, freed_bytes}`."""
        return self._request("DELETE", f"mlx/api/models/local/{model}", params={"force": "1"} if force else None)

    def pool(self, *, timeout: float | None = None) -> PoolStatus:
        """The pool's state (a dict that displays its models as a table); `timeout` (seconds)
        overrides the client's for this request."""
        return PoolStatus(self._get("mlx/api/pool", **({"timeout": timeout} if timeout is not None else {})))

    def audit(self, **filters: Any) -> AuditRecords:
        """Audit records, newest first; filters: user, model, status, since, until, limit, offset.
        A list of dicts that displays as a table (`.to_pandas()` with pandas)."""
        return AuditRecords(
            self._get("mlx/api/audit", params={k: v for k, v in filters.items() if v is not None})["records"]
        )

    # -- inference ----------------------------------------------------------------------------
    def chat(self, model: str, messages_or_text: str | list[dict[str, Any]], stream: bool = False, **params: Any):
        """The reply's text, a `ChatResult` (a `str` that displays as Markdown with a footer:
        tokens, time to first token, tok/s); with `stream=True`, an iterator of text pieces.
        A message's `content` may be a list mixing strings and images for a vision model:
        `{"role": "user", "content": ["describe this", fig]}` (a PIL image, a matplotlib figure,
        PNG/JPEG bytes or a `pathlib.Path`)."""
        messages = (
            [{"role": "user", "content": messages_or_text}] if isinstance(messages_or_text, str) else messages_or_text
        )
        messages = [_with_images(m) for m in messages]
        return self._generate(
            "mlx/v1/chat/completions", {"model": model, "messages": messages, **params}, stream, chat=True
        )

    def usage(self, group_by: str = "day", **filters: Any) -> UsageRows:
        """Requests and tokens per `day`, `user`, `model` or `notebook` (your own; an admin's:
        everyone's, or `user=`), as a table (`to_pandas()`); `since`/`until` as ISO times."""
        reply = self._get("mlx/api/usage", params={"group_by": group_by, **filters})
        return UsageRows(reply["rows"], title=f"Usage by {group_by}")

    def budget(self) -> dict[str, Any]:
        """Your token budgets: each window's limit, what is used and left, and when it renews."""
        return self._get("mlx/api/budgets")

    def map(
        self,
        model: str,
        prompts: Iterable[str | list[dict[str, Any]]],
        schema: Any = None,
        concurrency: int = 8,
        *,
        progress: bool = True,
        background: bool = False,
        **params: Any,
    ) -> list[Any] | BatchJob:
        """Chat with `model` about many prompts at once (`concurrency` requests in flight), with a
        progress bar. Each prompt is a text or a list of messages; `params` go with every request.

        Returns one result per prompt, in input order: a `ChatResult`, or with `schema` (a
        Pydantic model class or a JSON schema dict, sent as `response_format`) the parsed and
        validated value (a model instance; for a dict schema the parsed JSON). A prompt that
        failed has its exception in its place (`MLXManagerError`, `StructuredOutputError`…);
        the others are still served. Busy refusals (429/503) are retried with back-off.

        With `background=True` the prompts go to the server as one batch (OpenAI's Batch API):
        it runs at low priority (people typing go first), survives the kernel and the server
        restarting, and counts against your budget; a `BatchJob` handle is returned at once,
        whose `wait()` shows progress and returns the same results."""
        if params.pop("stream", False):
            raise ValueError("map() returns whole replies: stream=True is not supported")
        items = list(prompts)
        parse = None
        if schema is not None:
            response_format, parse = _structured(schema)
            params = {**params, "response_format": response_format}
        if background:
            return self._submit_batch(model, items, params, parse, progress)
        results: list[Any] = [None] * len(items)

        def one(index: int) -> None:
            try:
                reply = self._chat_when_free(model, items[index], params)
                results[index] = parse(reply) if parse is not None else reply
            except Exception as exc:  # reported in its place; the other prompts go on
                results[index] = exc

        if not items:
            return results
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=model, unit="req")
        executor = ThreadPoolExecutor(
            max_workers=max(1, min(int(concurrency), len(items))), thread_name_prefix="mlx-map"
        )
        try:
            futures = [executor.submit(one, i) for i in range(len(items))]
            for _ in as_completed(futures):
                if bar is not None:
                    bar.update(1)
        except BaseException:  # KeyboardInterrupt: the requests not started yet are dropped
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            if bar is not None:
                bar.close()
        executor.shutdown(wait=True)
        return results

    # -- workbench jobs ---------------------------------------------------------------------
    def finetune(self, model: str, data: str, name: str, **params: Any) -> Job:
        """Fine-tune `model` on `data` (a JSONL file under your Jupyter root, or a file id from
        `mlx/v1/files`; mlx-lm's `messages`, `prompt`/`completion` or `text` rows) into the model
        `adapter/<name>`. `params`: method (lora, dora, full), iters, batch_size, learning_rate,
        lora_rank, num_layers, max_seq_length, val_fraction, seed, save_every."""
        return self._job({"type": "finetune", "model": model, "data": data, "name": name, **params})

    def evaluate(self, models: str | list[str], data: str, **params: Any) -> Job:
        """Perplexity of `text` rows and multiple-choice accuracy of `question`/`choices`/`answer`
        rows, for one model or several compared. `params`: metrics, limit, max_seq_length."""
        models = [models] if isinstance(models, str) else list(models)
        return self._job({"type": "evaluate", "models": models, "data": data, **params})

    def convert(self, source: str, name: str, *, bits: int | None = None, group_size: int = 64, **params: Any) -> Job:
        """Convert a local Hugging Face model into `local/<name>` (quantized with `bits`)."""
        quantize = {"bits": bits, "group_size": group_size} if bits else None
        return self._job({"type": "convert", "source": source, "name": name, "quantize": quantize, **params})

    def job(self, job_id: str) -> Job:
        """A job of yours by id (e.g. after the kernel restarted)."""
        return Job(self, self._get(f"mlx/api/jobs/{job_id}"))

    def jobs(self) -> list[dict[str, Any]]:
        return self._get("mlx/api/jobs")["jobs"]

    def _job(self, body: dict[str, Any]) -> Job:
        return Job(self, self._request("POST", "mlx/api/jobs", json=body))

    def batch(self, batch_id: str) -> BatchJob:
        """A background `map()` (or any batch of yours) by id, e.g. after the kernel restarted."""
        batch = self._get(f"mlx/v1/batches/{batch_id}")
        return BatchJob(self, batch, batch["request_counts"]["total"])

    def _submit_batch(
        self, model: str, items: list[Any], params: dict[str, Any], parse: Callable[[str], Any] | None, progress: bool
    ) -> BatchJob:
        if not items:
            raise ValueError("map(background=True) needs at least one prompt")
        lines = []
        for index, prompt in enumerate(items):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            body = {"model": model, "messages": [_with_images(m) for m in messages], **params}
            lines.append(json.dumps({"custom_id": str(index), "method": "POST", "url": "/v1/chat/completions",
                                     "body": body}).encode())  # fmt: skip
        upload = self._request(
            "POST", "mlx/v1/files", files={"file": ("map.jsonl", b"\n".join(lines) + b"\n")}, data={"purpose": "batch"}
        )
        batch = self._request(
            "POST",
            "mlx/v1/batches",
            json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
                  "metadata": {"source": "map"}},
        )  # fmt: skip
        return BatchJob(self, batch, len(items), parse, progress)

    _BUSY_RETRIES, _BUSY_DELAY = 8, 0.25

    def _chat_when_free(self, model: str, prompt: str | list[dict[str, Any]], params: dict[str, Any]) -> ChatResult:
        delay = self._BUSY_DELAY
        for attempt in range(self._BUSY_RETRIES + 1):
            try:
                return self.chat(model, prompt, **params)
            except ServerBusy:
                if attempt == self._BUSY_RETRIES:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
        raise AssertionError("unreachable")

    def complete(self, model: str, prompt: str, stream: bool = False, **params: Any):
        return self._generate("mlx/v1/completions", {"model": model, "prompt": prompt, **params}, stream, chat=False)

    def embed(self, model: str, texts: str | list[str], *, dimensions: int | None = None):
        """Embeddings of `texts` (one string or a list) from an embedding model: one row per
        text, in order — a float32 numpy array of shape (len(texts), dim) when numpy is there,
        else a list of lists of floats. Lists longer than the server takes in one request
        (2,048) go in several."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows: list[bytes] = []
        for start in range(0, len(texts), EMBED_BATCH):
            body: dict[str, Any] = {"model": model, "input": texts[start : start + EMBED_BATCH]}
            body.update(encoding_format="base64", **({"dimensions": dimensions} if dimensions else {}))
            reply = self._request("POST", "mlx/v1/embeddings", json=body)
            rows += [base64.b64decode(item["embedding"]) for item in sorted(reply["data"], key=lambda d: d["index"])]
        try:
            import numpy as np
        except ImportError:
            return [list(struct.unpack(f"<{len(row) // 4}f", row)) for row in rows]
        return np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), -1) if rows else np.zeros((0, 0), "f4")

    def transcribe(self, model: str, audio: str | Path | bytes, *, language: str | None = None) -> str:
        """The text of an audio file (a path, or the file's bytes: WAV, FLAC, MP3 or Ogg Vorbis)
        from a transcription model."""
        data = audio if isinstance(audio, bytes) else Path(audio).expanduser().read_bytes()
        fields = {"model": model, "response_format": "json", **({"language": language} if language else {})}
        reply = self._request(
            "POST", "mlx/v1/audio/transcriptions", data=fields, files={"file": ("audio", data)}, timeout=600
        )
        return reply["text"]

    def speak(self, model: str, text: str, *, voice: str | None = None):
        """Speech of `text` from a speech model, as an `IPython.display.Audio` (it plays in the
        notebook; `.data` is the WAV's bytes, `.sample_rate` its rate); the WAV's bytes where
        IPython is not installed."""
        body = {"model": model, "input": text, "response_format": "wav", **({"voice": voice} if voice else {})}
        wav = self._call("POST", "mlx/v1/audio/speech", json=body, timeout=600).content
        try:
            from IPython.display import Audio
        except ImportError:
            return wav
        import wave

        with wave.open(io.BytesIO(wav)) as w:
            rate = w.getframerate()
        audio = Audio(data=wav)
        audio.sample_rate = rate
        return audio

    def openai(self):
        """An `openai.OpenAI` client for this server's `mlx/v1` API, with this client's credential."""
        import openai

        extra: dict[str, Any] = {}
        if self.kernel_id is not None and hasattr(openai, "DefaultHttpxClient"):
            # the SDK's requests name this kernel and cell too
            extra["http_client"] = openai.DefaultHttpxClient(event_hooks={"request": [self._attribute]})
        return openai.OpenAI(base_url=self.server.url + "mlx/v1", api_key=self.server.token or "none", **extra)

    def anthropic(self):
        """An `anthropic.Anthropic` client for this server's Messages API, with this client's
        credential (sent as a bearer: `x-api-key` carries only tokens of ours, not Jupyter's)."""
        import anthropic

        extra: dict[str, Any] = {}
        if self.kernel_id is not None and hasattr(anthropic, "DefaultHttpxClient"):
            extra["http_client"] = anthropic.DefaultHttpxClient(event_hooks={"request": [self._attribute]})
        return anthropic.Anthropic(base_url=self.server.url + "mlx", auth_token=self.server.token or "none", **extra)

    def _generate(self, path: str, body: dict[str, Any], stream: bool, chat: bool):
        if not stream:
            started = time.monotonic()
            response = self._call("POST", path, json=body)
            duration = time.monotonic() - started
            reply = response.json()
            choice = reply["choices"][0]
            text = (choice["message"]["content"] or "") if chat else choice["text"]
            usage = reply.get("usage") or {}
            ttft_ms = usage.get("ttft_ms", response.headers.get(TTFT_HEADER))
            try:
                ttft_s = float(ttft_ms) / 1000 if ttft_ms is not None else None
            except ValueError:
                ttft_s = None
            return (ChatResult if chat else CompletionResult)(
                text, model=reply.get("model") or body.get("model"), usage=usage, ttft_s=ttft_s,
                duration_s=duration, finish_reason=choice.get("finish_reason"), raw=reply,
            )  # fmt: skip
        return self._stream_text(path, {**body, "stream": True}, chat)

    def chat_deltas(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
        """A streamed chat reply as it arrives: each chunk's `delta` (`content`, and
        `reasoning_content` for a thinking model's reasoning). Closing the iterator ends the
        request (the server stops generating)."""
        body = {"model": model, "messages": [_with_images(m) for m in messages], **params, "stream": True}
        for event in self._stream_events("mlx/v1/chat/completions", body):
            for choice in event.get("choices", []):
                if choice.get("delta"):
                    yield choice["delta"]

    def _stream_text(self, path: str, body: dict[str, Any], chat: bool) -> Iterator[str]:
        for event in self._stream_events(path, body):
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if text:
                    yield text

    def _stream_events(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for event in self._sse(path, method="POST", json=body):
            if "error" in event:
                raise MLXManagerError(
                    500, event["error"].get("message", "generation failed"), event["error"].get("code")
                )
            yield event

    # -- transport ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._call(method, path, **kwargs)
        return response.json() if response.content else None

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; raises the typed error of a refusal."""
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response

    def _get(self, path: str, **kwargs: Any) -> Any:
        return self._request("GET", path, **kwargs)

    def _sse(self, path: str, method: str = "GET", **kwargs: Any) -> Iterator[dict[str, Any]]:
        with self._http.stream(method, path, timeout=httpx.Timeout(600, read=None), **kwargs) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                    if data == "[DONE]":
                        return
                    yield json.loads(data)


TTFT_HEADER = "X-MLX-TTFT-Ms"  # the server's time to first token of a non-streamed reply, if it sends it


class BatchJob:
    """A background `map()`: a batch on the server. `status()` reads it, `wait()` follows it
    with a progress bar and returns the results in input order, `cancel()` stops it (what
    finished is kept). The batch goes on if the kernel stops: `connect().batch(id)` finds it."""

    TERMINAL = ("completed", "failed", "cancelled", "expired")

    def __init__(self, client: MLXClient, batch: dict[str, Any], count: int, parse: Any = None, progress: bool = True):
        self.client = client
        self.id = batch["id"]
        self.batch = batch
        self.count = count
        self.parse = parse
        self.progress = progress

    def status(self) -> dict[str, Any]:
        self.batch = self.client._get(f"mlx/v1/batches/{self.id}")
        return self.batch

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.count, desc=f"batch {self.id}", unit="req")
        try:
            while True:
                batch = self.status()
                counts = batch["request_counts"]
                if bar is not None:
                    bar.n = counts["completed"] + counts["failed"]
                    bar.refresh()
                if batch["status"] in self.TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"batch {self.id} is still {batch['status']}")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        return self.results()

    def results(self) -> list[Any]:
        """One result per prompt, in input order: a `ChatResult` (or the parsed value), an
        `MLXManagerError` for a prompt that failed, None for one not answered (cancelled)."""
        results: list[Any] = [None] * self.count
        for file_id in (self.batch.get("output_file_id"), self.batch.get("error_file_id")):
            if not file_id:
                continue
            for line in self.client._call("GET", f"mlx/v1/files/{file_id}/content").text.splitlines():
                answer = json.loads(line)
                index, reply = int(answer["custom_id"]), answer["response"]
                body = reply["body"]
                if reply["status_code"] != 200:
                    error = body.get("error") or {}
                    results[index] = MLXManagerError(reply["status_code"], error.get("message", ""), error.get("code"))
                    continue
                choice = body["choices"][0]
                result = ChatResult(
                    choice["message"].get("content") or "", model=body.get("model"), usage=body.get("usage"),
                    finish_reason=choice.get("finish_reason"), raw=body,
                )  # fmt: skip
                try:
                    results[index] = self.parse(result) if self.parse is not None else result
                except Exception as exc:  # the prompt's own failure, in its place
                    results[index] = exc
        return results

    def cancel(self) -> dict[str, Any]:
        self.batch = self.client._request("POST", f"mlx/v1/batches/{self.id}/cancel")
        return self.batch

    def __repr__(self) -> str:
        counts = self.batch.get("request_counts") or {}
        return (
            f"<BatchJob {self.id}: {self.batch.get('status')}, {counts.get('completed', 0)} of {self.count} done, "
            f"{counts.get('failed', 0)} failed>"
        )


def _with_images(message: dict[str, Any]) -> dict[str, Any]:
    """A message whose `content` is a list mixing strings and images (a PIL image, a matplotlib
    figure, PNG/JPEG bytes, a `pathlib.Path`) in OpenAI's parts: text parts and data URLs."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": [_part(item) for item in content]}


def _part(item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if isinstance(item, dict):  # already a wire part
        return item
    if isinstance(item, Path):
        data = item.read_bytes()
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    elif hasattr(item, "savefig") or (hasattr(item, "save") and hasattr(item, "mode")):  # a figure, a PIL image
        buffer = io.BytesIO()
        if hasattr(item, "savefig"):
            item.savefig(buffer, format="png", bbox_inches="tight")
        else:  # PNG cannot hold every PIL mode (CMYK, YCbCr, HSV, F...)
            png_mode = item.mode in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
            (item if png_mode else item.convert("RGB")).save(buffer, "PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"a message part must be text or an image, not {type(item).__name__}")
    kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg" if data.startswith(b"\xff\xd8") else None
    if kind is None:
        raise ValueError("image bytes must be PNG or JPEG")
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{base64.b64encode(data).decode()}"}}


def _structured(schema: Any) -> tuple[dict[str, Any], Callable[[str], Any]]:
    """(response_format, parse) for a Pydantic model class or a JSON schema dict."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate_json"):
        json_schema, name = schema.model_json_schema(), schema.__name__

        def parse(text: str) -> Any:
            try:
                return schema.model_validate_json(_json_text(text))
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise StructuredOutputError(f"the reply does not validate as {name}: {exc}", text) from exc

    elif isinstance(schema, dict):
        json_schema, name = schema, str(schema.get("title") or "result")
        try:
            import jsonschema
        except ImportError:
            jsonschema = None
        else:
            jsonschema.validators.validator_for(schema).check_schema(schema)  # a bad schema fails at once

        def parse(text: str) -> Any:
            try:
                value = json.loads(_json_text(text))
            except ValueError as exc:
                raise StructuredOutputError(f"the reply is not JSON: {exc}", text) from exc
            if jsonschema is not None:
                try:
                    jsonschema.validate(value, json_schema)
                except jsonschema.ValidationError as exc:
                    raise StructuredOutputError(f"the reply does not match the schema: {exc.message}", text) from exc
            return value

    else:
        raise TypeError("schema must be a Pydantic model class or a JSON schema dict")
    wire_name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "result"
    return {"type": "json_schema", "json_schema": {"name": wire_name, "schema": json_schema, "strict": True}}, parse


def _json_text(text: str) -> str:
    """The JSON of a reply, without the Markdown code fence some models put around it."""
    match = re.fullmatch(r"\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*", text, flags=re.DOTALL)
    return match.group(1) if match else text


def connect(url: str | None = None, token: str | None = None) -> MLXClient:
    """A client for the Jupyter server this kernel runs under (or `url` with `token`)."""
    return MLXClient(
        ServerInfo(url if url.endswith("/") else url + "/", token or "", "argument") if url else find_server()
    )
