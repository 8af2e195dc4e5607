"""The widgets (ipywidgets 8). Their `state`, `error` and values are plain traitlets, so
code (and tests) can drive them as a user would: set the model, press the button, watch.

Every action ends in a usable state: whatever goes wrong (the server refuses, restarts or
cannot be reached, a stream breaks) the widget shows a readable `error` and its buttons
work again."""

from __future__ import annotations

import contextvars
import html
import threading
from typing import Any

import httpx
import ipywidgets as w
from traitlets import Unicode

from ..client import MLXClient, MLXManagerError, NotFound, connect
from ..client.results import DEMO_LABEL, format_bytes


def _in_background(target, *args) -> threading.Thread:
    """Run `target` on a daemon thread that inherits the cell's context (ipykernel 7 parent)."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target, *args), daemon=True)
    thread.start()
    return thread


def describe(exc: BaseException, client: Any = None) -> str:
    """A readable line for what went wrong: the server's message, or which server could not
    be reached and how."""
    server = getattr(getattr(client, "server", None), "url", None)
    where = f" at {server}" if server else ""
    if isinstance(exc, MLXManagerError):
        return exc.message or str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"the server{where} did not answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError):  # refused, reset, closed mid-stream, …
        return f"cannot reach the server{where} ({type(exc).__name__}: {exc}); is it running?"
    return f"{type(exc).__name__}: {exc}"


def _error_html(message: str) -> str:
    return f"<span style='color: var(--jp-error-color1)'>error: {html.escape(message)}</span>"


class ModelPicker(w.VBox):
    """Pick a model; load or unload it in the shared pool. `state`: idle, loading, loaded,
    unloading or error (with `error`).

    Given `models`, it offers those; given none, the local models with the loaded ones first,
    one of them chosen."""

    state = Unicode("idle")
    error = Unicode("")

    def __init__(
        self,
        client: MLXClient | None = None,
        pin: bool = False,
        keep_alive: float | None = None,
        models: list[str] | None = None,
        **kwargs,
    ):
        self.client = client or connect()
        self.pin, self.keep_alive = pin, keep_alive
        self.models = list(models) if models is not None else None
        self.loaded: set[str] = set()
        self.demo: set[str] = set()
        self.dropdown = w.Dropdown(description="Model", options=[], layout=w.Layout(width="auto"))
        self.load_button = w.Button(description="Load", button_style="primary", icon="play")
        self.unload_button = w.Button(description="Unload", icon="stop")
        self.progress = w.IntProgress(value=0, min=0, max=1, bar_style="info", layout=w.Layout(visibility="hidden"))
        self.status = w.HTML()
        self.load_button.on_click(lambda _: self.load())
        self.unload_button.on_click(lambda _: self.unload())
        super().__init__(
            [self.dropdown, w.HBox([self.load_button, self.unload_button, self.progress]), self.status], **kwargs
        )
        self.observe(self._render, names=["state", "error"])
        self.dropdown.observe(self._on_pick, names="value")
        self.refresh()

    @property
    def model(self) -> str | None:
        return self.dropdown.value

    @model.setter
    def model(self, value: str) -> None:
        if value not in self.dropdown.options:
            self.dropdown.options = [*self.dropdown.options, value]
        self.dropdown.value = value

    def refresh(self) -> None:
        """Re-read the local models and which of them are loaded; on failure the picker
        shows the error (and `refresh()` again recovers once the server answers)."""
        try:
            try:
                local = list(self.client.local_models())
            except NotFound:  # older servers: the OpenAI model list has the same ids
                local = [{"id": m.id} for m in self.client.openai().models.list().data]
            loaded = [m["model"] for m in self.client.pool()["models"]]
        except Exception as exc:
            if self.state not in ("loading", "unloading"):
                self.error, self.state = describe(exc, self.client), "error"
            return
        self.loaded = set(loaded)
        self.demo = {m["id"] for m in local if m.get("demo")}
        if self.models is not None:
            ids = self.models
        else:
            ids = loaded + [m["id"] for m in local if m["id"] not in self.loaded]
        current = self.dropdown.value
        self.dropdown.options = ids
        chosen = current if current in ids else (loaded[0] if loaded and loaded[0] in ids else None)
        self.dropdown.value = chosen or (ids[0] if ids else None)
        if self.state not in ("loading", "unloading"):
            self.error, self.state = "", "loaded" if self.model in self.loaded else "idle"

    def load(self) -> threading.Thread:
        return self._run(
            "loading", "loaded", lambda: self.client.load(self.model, pin=self.pin, keep_alive=self.keep_alive)
        )

    def unload(self) -> threading.Thread:
        return self._run("unloading", "idle", lambda: self.client.unload(self.model))

    def _on_pick(self, _=None) -> None:
        if self.state in ("idle", "loaded"):
            self.state = "loaded" if self.model in self.loaded else "idle"
        self._render()

    def _run(self, busy: str, done: str, action) -> threading.Thread:
        self.error, self.state = "", busy
        model = self.model

        def work():
            try:
                action()
            except Exception as exc:  # refused, unreachable, restarted: show it, buttons back
                self.error, self.state = describe(exc, self.client), "error"
            else:
                (self.loaded.add if done == "loaded" else self.loaded.discard)(model)
                self.state = done

        return _in_background(work)

    def _render(self, _=None) -> None:
        busy = self.state in ("loading", "unloading")
        self.load_button.disabled = self.unload_button.disabled = busy
        self.progress.layout.visibility = "visible" if busy else "hidden"
        self.progress.bar_style = "info"
        self.progress.value = 0 if busy else 1
        text = {"idle": "not loaded", "loading": "loading…", "loaded": "loaded", "unloading": "unloading…"}.get(
            self.state, ""
        )
        if self.state == "error":
            text = _error_html(self.error)
        elif self.model in self.demo:
            text += f" · <i>{DEMO_LABEL}</i>: its replies are noise"
        self.status.value = f"<b>{html.escape(self.model or '')}</b> {text}"


class DownloadWidget(w.VBox):
    """Download a Hub repo into the local cache with live progress; cancel it. A failed
    download shows why, and offers Retry (the Download button) and Remove (its partial
    files)."""

    state = Unicode("idle")  # idle, downloading, completed, failed, cancelled, error
    error = Unicode("")

    def __init__(self, client: MLXClient | None = None, repo_id: str = "", **kwargs):
        self.client = client or connect()
        self.repo = w.Text(value=repo_id, description="Repo", placeholder="org/name")
        self.download_button = w.Button(description="Download", button_style="primary", icon="download")
        self.cancel_button = w.Button(description="Cancel", icon="times", disabled=True)
        self.remove_button = w.Button(
            description="Remove", icon="trash", tooltip="remove the partial files", layout=w.Layout(display="none")
        )
        self.bar = w.FloatProgress(value=0, min=0, max=1)
        self.label = w.HTML()
        self.download_button.on_click(lambda _: self.start())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.remove_button.on_click(lambda _: self.remove())
        self.handle = None
        super().__init__(
            [w.HBox([self.repo, self.download_button, self.cancel_button, self.remove_button]), self.bar, self.label],
            **kwargs,
        )

    def start(self) -> threading.Thread | None:
        if self.state == "downloading":
            return None
        self.error = ""
        try:
            self.handle = self.client.download(self.repo.value.strip(), wait=False, progress=False)
        except Exception as exc:  # refused (bad repo id, no permission) or unreachable
            self._fail(describe(exc, self.client))
            return None
        self.state = "downloading"
        self.bar.bar_style = ""
        self.download_button.disabled, self.cancel_button.disabled = True, False
        self.download_button.description, self.remove_button.layout.display = "Download", "none"
        self.handle.on_progress(self._show)
        self._show(self.handle.progress)
        return _in_background(self._follow, self.handle)

    def cancel(self) -> None:
        if self.handle is None:
            return
        try:
            self.handle.cancel()
        except Exception as exc:  # the download may still run: Cancel stays usable
            self.error = describe(exc, self.client)
            self.label.value = _error_html(self.error)

    def remove(self) -> None:
        """Remove what a failed download left (its partial files); the widget starts afresh."""
        if self.handle is None or self.state not in ("failed", "cancelled"):
            return
        try:
            self.handle.cancel()  # for a failed download: its partial files go
        except Exception as exc:
            self.error = describe(exc, self.client)
            self.label.value = _error_html(self.error)
            return
        repo = html.escape(str(self.handle.progress.get("repo_id", "")))
        self.handle, self.error, self.state = None, "", "idle"
        self.bar.value, self.bar.bar_style = 0, ""
        self.download_button.description, self.remove_button.layout.display = "Download", "none"
        self.label.value = f"{repo}: removed"

    def _fail(self, message: str) -> None:
        self.error, self.state = message, "error"
        self.label.value = _error_html(message)
        self.download_button.disabled, self.cancel_button.disabled = False, True

    def _show(self, record: dict[str, Any]) -> None:
        total = record.get("total_bytes") or 0
        done = record.get("downloaded_bytes") or 0
        self.bar.max = max(total, 1)
        self.bar.value = min(done, self.bar.max)
        repo, status = html.escape(str(record.get("repo_id", ""))), html.escape(str(record.get("status", "")))
        if record.get("status") == "failed":
            self.label.value = _error_html(f"{record.get('repo_id', '')}: {record.get('error') or 'failed'}")
            return
        if not record.get("files_total"):  # the Hub has not listed the files yet
            self.label.value = f"{repo}: {status}…" if status != "cancelled" else f"{repo}: cancelled"
            return
        self.label.value = (
            f"{repo}: {status} — {format_bytes(done)} of {format_bytes(total)}, "
            f"{record.get('files_done') or 0}/{record['files_total']} files"
        )

    def _follow(self, handle) -> None:
        """Wait for the end (the handle follows the server's stream and reconnects)."""
        try:
            handle.wait()
        except Exception as exc:
            record = handle.progress
            if record.get("status") in handle.FINAL:  # failed or cancelled on the server
                self._show(record)
                self.error, self.state = record.get("error") or "", record["status"]
                self.bar.bar_style = "danger"
                self.download_button.disabled, self.cancel_button.disabled = False, True
                self.download_button.description = "Retry"
                self.remove_button.layout.display = "" if record["status"] == "failed" else "none"
            else:  # lost the server
                self._fail(describe(exc, self.client))
            return
        self._show(handle.progress)
        self.error, self.state = "", "completed"
        self.bar.bar_style = "success"
        self.download_button.disabled, self.cancel_button.disabled = False, True


class PoolMonitor(w.VBox):
    """The loaded models and their memory against the budget, refreshed every `interval` s
    on a background thread (backing off while the server cannot be reached, with the error
    shown in `error`); `close()` (or `stop()`) ends the thread."""

    error = Unicode("")

    def __init__(self, client: MLXClient | None = None, interval: float = 2.0, **kwargs):
        self.client = client or connect()
        self.interval = interval
        self.memory = w.FloatProgress(value=0, min=0, max=1, description="Memory")
        self.table = w.HTML()
        self.notice = w.HTML()
        self.snapshot: dict[str, Any] = {}
        self._stop = threading.Event()
        super().__init__([self.memory, self.table, self.notice], **kwargs)
        self._poll()
        self.thread = _in_background(self._loop)

    def refresh(self) -> None:
        """Fetch the pool now (raises on failure; the background loop shows it instead)."""
        pool = self.client.pool(timeout=min(30.0, max(5.0, 2 * self.interval)))
        if self._stop.is_set():
            return
        self.snapshot = pool
        budget = pool["limits"]["max_memory_bytes"]
        self.memory.max = max(budget, 1)
        self.memory.value = pool["memory_used_bytes"]
        self.memory.description = f"{format_bytes(pool['memory_used_bytes'])} / {format_bytes(budget)}"
        rows = "".join(
            f"<tr><td>{html.escape(m['model'])}</td><td>{m['status']}</td><td>{format_bytes(m['memory_bytes'])}</td>"
            f"<td>{'📌' if m['pinned'] else ''}</td><td>{m['requests']}</td><td>{m['pid']}</td></tr>"
            for m in pool["models"]
        )
        self.table.value = (
            "<table><tr><th>model</th><th>status</th><th>memory</th><th>pinned</th><th>requests</th><th>pid</th></tr>"
            f"{rows or '<tr><td colspan=6>no model loaded</td></tr>'}</table>"
        )

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """End the refresh thread (waits up to `timeout` s for a request in flight)."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def close(self) -> None:
        self.stop()
        super().close()

    def _poll(self) -> bool:
        try:
            self.refresh()
        except Exception as exc:
            if not self._stop.is_set():
                self.error = describe(exc, self.client)
                self.notice.value = _error_html(self.error)
            return False
        if self.error:
            self.error, self.notice.value = "", ""
        return True

    def _loop(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            if self._poll():
                delay = self.interval
            else:  # back off while the server is away: 2×, 4×… the interval, at most 30 s
                delay = min(max(delay * 2, self.interval), max(30.0, self.interval))


class ChatWidget(w.VBox):
    """Chat with a loaded model; replies stream in; Stop ends the generation."""

    state = Unicode("idle")  # idle, generating, error
    error = Unicode("")

    def __init__(self, client: MLXClient | None = None, model: str | None = None, **params: Any):
        self.client = client or connect()
        self.params = params
        try:
            loaded = [m["model"] for m in self.client.pool()["models"]]
        except Exception as exc:  # the widget still opens; sending shows what is wrong
            loaded = []
            self.error, self.state = describe(exc, self.client), "error"
        self.model = w.Dropdown(
            description="Model",
            options=sorted(set(loaded) | ({model} if model else set())),
            value=model or (loaded[0] if loaded else None),
        )
        self.prompt = w.Textarea(placeholder="Ask something…", layout=w.Layout(width="100%"))
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.transcript = w.HTML()
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self._stop.set())
        super().__init__([self.model, self.transcript, self.prompt, w.HBox([self.send_button, self.stop_button])])
        self._render()

    def refresh(self) -> None:
        """Re-read the loaded models (e.g. after the server came back)."""
        try:
            loaded = [m["model"] for m in self.client.pool()["models"]]
        except Exception as exc:
            if self.state != "generating":
                self.error, self.state = describe(exc, self.client), "error"
                self._render()
            return
        current = self.model.value
        self.model.options = sorted(set(loaded) | ({current} if current else set()))
        self.model.value = current or (loaded[0] if loaded else None)
        if self.state == "error":
            self.error, self.state = "", "idle"
            self._render()

    def send(self, text: str | None = None) -> threading.Thread | None:
        text = (text if text is not None else self.prompt.value).strip()
        if not text or self.state == "generating" or not self.model.value:
            return None
        self.prompt.value, self.error = "", ""
        self.messages.append({"role": "user", "content": text})
        self.messages.append({"role": "assistant", "content": ""})
        self._stop.clear()
        self.state = "generating"
        self.send_button.disabled, self.stop_button.disabled = True, False
        return _in_background(self._generate)

    def _generate(self) -> None:
        reply = self.messages[-1]
        try:
            stream = self.client.chat(self.model.value, self.messages[:-1], stream=True, **self.params)
            try:
                for piece in stream:
                    if self._stop.is_set():
                        break
                    reply["content"] += piece
                    self._render()
            finally:
                if hasattr(stream, "close"):
                    stream.close()  # ends the HTTP stream now, so Stop frees the model at once
            self.state = "idle"
        except Exception as exc:  # refused, unreachable, the stream broke: show it, buttons back
            self.error, self.state = describe(exc, self.client), "error"
        finally:
            self.send_button.disabled, self.stop_button.disabled = False, True
            self._render()

    def _render(self) -> None:
        lines = [
            f"<div><b>{'You' if m['role'] == 'user' else html.escape(self.model.value or 'model')}:</b> "
            f"{html.escape(m['content'])}</div>"
            for m in self.messages
        ]
        if self.error:
            lines.append(f"<div style='color: var(--jp-error-color1)'>error: {html.escape(self.error)}</div>")
        self.transcript.value = "".join(lines)


class JobWidget(w.VBox):
    """A workbench job as it runs on the server: its state, a progress bar, a fine-tune's loss
    chart (train and validation, drawn as SVG), the result at the end; Cancel stops it."""

    state = Unicode("")  # the job's status

    def __init__(self, job: Any, **kwargs: Any):
        self.job = job
        self.label = w.HTML()
        self.bar = w.IntProgress(value=0, min=0, max=1)
        self.chart = w.HTML()
        self.cancel_button = w.Button(description="Cancel", icon="times")
        self.cancel_button.on_click(lambda _: self.cancel())
        super().__init__([w.HBox([self.label, self.cancel_button]), self.bar, self.chart], **kwargs)
        self._show(job.record)
        self.thread = _in_background(self._follow)

    def cancel(self) -> None:
        try:
            self._show(self.job.cancel())
        except Exception as exc:  # the job may still run: Cancel stays usable
            self.label.value = _error_html(describe(exc, self.job.client))

    def _follow(self) -> None:
        try:
            for record in self.job.follow():
                self._show(record)
        except Exception as exc:
            self.label.value = _error_html(describe(exc, self.job.client))

    def _show(self, record: dict[str, Any]) -> None:
        self.state = record["status"]
        progress = record.get("progress") or {}
        total = progress.get("iters") or progress.get("models") or 1
        self.bar.max, self.bar.value = total, progress.get("iteration") or progress.get("models_done") or 0
        self.bar.bar_style = {"succeeded": "success", "failed": "danger", "cancelled": "warning"}.get(self.state, "")
        text = f"<b>{html.escape(record['type'])}</b> {html.escape(record['id'])}: {html.escape(self.state)}"
        if "train_loss" in progress:
            text += f" · loss {progress['train_loss']:.3f}"
        if progress.get("eta_s") and self.state == "running":
            text += f" · about {progress['eta_s']:.0f} s left"
        if record.get("error"):
            text += " — " + html.escape(record["error"])
        if self.state == "succeeded" and (record.get("result") or {}).get("model"):
            text += f" → <code>{html.escape(record['result']['model'])}</code>"
        self.label.value = text
        self.cancel_button.disabled = self.state in ("succeeded", "failed", "cancelled", "interrupted")
        self.chart.value = loss_chart(progress.get("curve") or [])


def loss_chart(curve: list[dict[str, Any]], width: int = 420, height: int = 160) -> str:
    """An SVG line chart of a fine-tune's train and validation loss against the iteration,
    with axes, their labels and a legend ("" before there are two points)."""
    series = {name: [(p["iteration"], p[name]) for p in curve if name in p] for name in ("train_loss", "val_loss")}
    points = [pt for values in series.values() for pt in values]
    if len(points) < 2:
        return ""
    left, bottom, top, right = 48, height - 28, 10, width - 10
    x_max = max(x for x, _ in points) or 1
    y_min, y_max = min(y for _, y in points), max(y for _, y in points)
    y_span = (y_max - y_min) or 1.0

    def at(x: float, y: float) -> str:
        return f"{left + (right - left) * x / x_max:.1f},{bottom - (bottom - top) * (y - y_min) / y_span:.1f}"

    lines = []
    for name, color in (("train_loss", "#1976d2"), ("val_loss", "#e65100")):
        if len(series[name]) >= 2:
            path = " ".join(at(x, y) for x, y in series[name])
            lines.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{path}'/>")
    return (
        f"<svg width='{width}' height='{height}' role='img' aria-label='loss by iteration'>"
        f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='currentColor'/>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='currentColor'/>"
        f"<text x='{left}' y='{height - 8}' font-size='11'>0</text>"
        f"<text x='{right}' y='{height - 8}' font-size='11' text-anchor='end'>{x_max} iterations</text>"
        f"<text x='{left - 4}' y='{top + 10}' font-size='11' text-anchor='end'>{y_max:.2f}</text>"
        f"<text x='{left - 4}' y='{bottom}' font-size='11' text-anchor='end'>{y_min:.2f}</text>"
        f"<text x='4' y='{(top + bottom) // 2}' font-size='11'>loss</text>"
        + "".join(lines)
        + f"<text x='{right}' y='{top + 10}' font-size='11' text-anchor='end' fill='#1976d2'>train</text>"
        f"<text x='{right}' y='{top + 24}' font-size='11' text-anchor='end' fill='#e65100'>validation</text>"
        "</svg>"
    )
