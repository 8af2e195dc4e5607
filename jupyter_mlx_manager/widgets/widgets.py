"""The widgets (ipywidgets 8). Their `state`, `error` and values are plain traitlets, so
code (and tests) can drive them as a user would: set the model, press the button, watch."""

from __future__ import annotations

import contextvars
import html
import threading
import time
from typing import Any

import ipywidgets as w
from traitlets import Unicode

from ..client import MLXClient, MLXManagerError, connect


def _in_background(target, *args) -> threading.Thread:
    """Run `target` on a daemon thread that inherits the cell's context (ipykernel 7 parent)."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target, *args), daemon=True)
    thread.start()
    return thread


def _gib(n: int | float | None) -> str:
    return f"{(n or 0) / 1024**3:.2f} GiB"


class ModelPicker(w.VBox):
    """Pick a local model; load or unload it in the shared pool. `state`: idle, loading,
    loaded, unloading or error (with `error`)."""

    state = Unicode("idle")
    error = Unicode("")

    def __init__(self, client: MLXClient | None = None, pin: bool = False, keep_alive: float | None = None, **kwargs):
        self.client = client or connect()
        self.pin, self.keep_alive = pin, keep_alive
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
        """Re-read the local models and which of them are loaded."""
        try:
            ids = [m["id"] for m in self.client.local_models()]
        except MLXManagerError:  # older servers: the OpenAI model list has the same ids
            ids = [m.id for m in self.client.openai().models.list().data]
        current = self.dropdown.value
        self.dropdown.options = ids
        if current in ids:
            self.dropdown.value = current
        loaded = {m["model"] for m in self.client.pool()["models"]}
        if self.state not in ("loading", "unloading"):
            self.state = "loaded" if self.model in loaded else "idle"

    def load(self) -> threading.Thread:
        return self._run(
            "loading", "loaded", lambda: self.client.load(self.model, pin=self.pin, keep_alive=self.keep_alive)
        )

    def unload(self) -> threading.Thread:
        return self._run("unloading", "idle", lambda: self.client.unload(self.model))

    def _run(self, busy: str, done: str, action) -> threading.Thread:
        self.error, self.state = "", busy

        def work():
            try:
                action()
                self.state = done
            except MLXManagerError as exc:
                self.error, self.state = exc.message, "error"

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
            text = f"<span style='color: var(--jp-error-color1)'>error: {html.escape(self.error)}</span>"
        self.status.value = f"<b>{html.escape(self.model or '')}</b> {text}"


class DownloadWidget(w.VBox):
    """Download a Hub repo into the local cache with live progress; cancel it."""

    state = Unicode("idle")  # idle, downloading, completed, failed, cancelled, error
    error = Unicode("")

    def __init__(self, client: MLXClient | None = None, repo_id: str = "", **kwargs):
        self.client = client or connect()
        self.repo = w.Text(value=repo_id, description="Repo", placeholder="org/name")
        self.download_button = w.Button(description="Download", button_style="primary", icon="download")
        self.cancel_button = w.Button(description="Cancel", icon="times", disabled=True)
        self.bar = w.FloatProgress(value=0, min=0, max=1)
        self.label = w.HTML()
        self.download_button.on_click(lambda _: self.start())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.handle = None
        super().__init__(
            [w.HBox([self.repo, self.download_button, self.cancel_button]), self.bar, self.label], **kwargs
        )

    def start(self) -> threading.Thread | None:
        self.error = ""
        try:
            self.handle = self.client.download(self.repo.value.strip(), wait=False, progress=False)
        except MLXManagerError as exc:
            self.error, self.state = exc.message, "error"
            self.label.value = f"<span style='color: var(--jp-error-color1)'>{html.escape(exc.message)}</span>"
            return None
        self.state = "downloading"
        self.download_button.disabled, self.cancel_button.disabled = True, False
        return _in_background(self._follow)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _follow(self) -> None:
        while True:
            record = self.handle.progress
            total = record.get("total_bytes") or 0
            self.bar.max = max(total, 1)
            self.bar.value = record.get("downloaded_bytes", 0)
            self.label.value = (
                f"{html.escape(record['repo_id'])}: {record['status']} — {_gib(record.get('downloaded_bytes'))} of {_gib(total)}, "
                f"{record.get('files_done', 0)}/{record.get('files_total', 0)} files"
            )
            if record["status"] in ("completed", "failed", "cancelled"):
                self.state = record["status"]
                self.error = record.get("error") or ""
                self.bar.bar_style = "success" if record["status"] == "completed" else "danger"
                self.download_button.disabled, self.cancel_button.disabled = False, True
                return
            time.sleep(0.25)


class PoolMonitor(w.VBox):
    """The loaded models and their memory against the budget, refreshed every `interval` s."""

    def __init__(self, client: MLXClient | None = None, interval: float = 2.0, **kwargs):
        self.client = client or connect()
        self.interval = interval
        self.memory = w.FloatProgress(value=0, min=0, max=1, description="Memory")
        self.table = w.HTML()
        self.snapshot: dict[str, Any] = {}
        self._stop = threading.Event()
        super().__init__([self.memory, self.table], **kwargs)
        self.refresh()
        _in_background(self._loop)

    def refresh(self) -> None:
        pool = self.snapshot = self.client.pool()
        budget = pool["limits"]["max_memory_bytes"]
        self.memory.max = max(budget, 1)
        self.memory.value = pool["memory_used_bytes"]
        self.memory.description = f"{_gib(pool['memory_used_bytes'])} / {_gib(budget)}"
        rows = "".join(
            f"<tr><td>{html.escape(m['model'])}</td><td>{m['status']}</td><td>{_gib(m['memory_bytes'])}</td>"
            f"<td>{'📌' if m['pinned'] else ''}</td><td>{m['requests']}</td><td>{m['pid']}</td></tr>"
            for m in pool["models"]
        )
        self.table.value = (
            "<table><tr><th>model</th><th>status</th><th>memory</th><th>pinned</th><th>requests</th><th>pid</th></tr>"
            f"{rows or '<tr><td colspan=6>no model loaded</td></tr>'}</table>"
        )

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except (MLXManagerError, OSError):
                continue


class ChatWidget(w.VBox):
    """Chat with a loaded model; replies stream in; Stop ends the generation."""

    state = Unicode("idle")  # idle, generating, error
    error = Unicode("")

    def __init__(self, client: MLXClient | None = None, model: str | None = None, **params: Any):
        self.client = client or connect()
        self.params = params
        loaded = [m["model"] for m in self.client.pool()["models"]]
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
            for piece in self.client.chat(self.model.value, self.messages[:-1], stream=True, **self.params):
                if self._stop.is_set():
                    break
                reply["content"] += piece
                self._render()
            self.state = "idle"
        except MLXManagerError as exc:
            self.error, self.state = exc.message, "error"
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
