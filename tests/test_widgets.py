"""The notebook widgets, driven the way a user would, against a real server process."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from models import build_models, eos_id
from servers import free_port, jupyter_server
from waiting import wait_until

from jupyter_mlx_manager import connect
from jupyter_mlx_manager.client import Download, MLXManagerError
from jupyter_mlx_manager.widgets import ChatWidget, DownloadWidget, JobWidget, ModelPicker, PoolMonitor

MODEL = "local/tiny-demo"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("widgets")
    models = build_models(root, ["tiny-demo"])
    with jupyter_server(root, f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=-1") as running:
        running.models = models
        yield running


@pytest.fixture
def client(server):
    return connect(server.url, server.token)


def test_model_picker_loads_unloads_and_reports_errors(client):
    picker = ModelPicker(client)
    assert MODEL in picker.dropdown.options and picker.state == "idle"
    picker.model = MODEL
    picker.load_button.click()
    assert picker.state == "loading" and picker.load_button.disabled  # the cell is free while it loads
    wait_until(lambda: picker.state != "loading", "the picker to load", timeout=60)
    assert picker.state == "loaded" and "loaded" in picker.status.value
    assert MODEL in [m["model"] for m in client.pool()["models"]]

    picker.unload().join(60)
    assert picker.state == "idle" and client.pool()["models"] == []

    picker.model = "local/not-there"
    picker.load().join(60)
    assert picker.state == "error" and "not on this machine" in picker.error
    assert "error" in picker.status.value


def test_pool_monitor_shows_loaded_models_and_memory(client):
    client.load(MODEL)
    monitor = PoolMonitor(client, interval=0.2)
    try:
        wait_until(lambda: MODEL in monitor.table.value, "the model in the pool table", timeout=60)
        assert monitor.memory.value > 0 and monitor.memory.max >= monitor.memory.value
        client.unload(MODEL)
        wait_until(lambda: "no model loaded" in monitor.table.value, "an empty pool table", timeout=10)
    finally:
        monitor.stop()


def test_chat_widget_streams_and_stops(client, server):
    client.load(MODEL)
    no_eos = {str(eos_id(server.models / "tiny-demo")): -100}
    chat = ChatWidget(client, model=MODEL, max_tokens=12, logit_bias=no_eos)
    chat.prompt.value = "Hello there"
    chat.send_button.click()
    wait_until(lambda: chat.state != "generating", "the chat to finish", timeout=60)
    assert chat.state == "idle" and "Hello there" in chat.transcript.value
    assert chat.messages[-1]["role"] == "assistant" and chat.messages[-1]["content"]

    long_chat = ChatWidget(client, model=MODEL, max_tokens=4000, logit_bias=no_eos)
    thread = long_chat.send("Go on forever")
    wait_until(lambda: long_chat.messages[-1]["content"], "the long chat's first text", timeout=60)
    long_chat.stop_button.click()
    thread.join(10)
    assert long_chat.state == "idle" and long_chat.stop_button.disabled
    wait_until(lambda: all(m["in_flight"] == 0 for m in client.pool()["models"]), "nothing in flight", timeout=20)


def _usable(*buttons):
    return not any(b.disabled for b in buttons)


def test_widgets_against_an_unreachable_server_show_the_error_and_stay_usable():
    client = connect(f"http://127.0.0.1:{free_port()}/", "no-server-here")

    picker = ModelPicker(client)  # opens anyway, showing why it has no models
    assert picker.state == "error" and "cannot reach the server" in picker.error
    picker.model = MODEL
    picker.load_button.click()
    wait_until(lambda: picker.state != "loading", "the picker to load", timeout=10)
    assert picker.state == "error" and "cannot reach the server" in picker.error and "error" in picker.status.value
    assert _usable(picker.load_button, picker.unload_button)

    download = DownloadWidget(client, repo_id="mlx-community/tiny")
    assert download.start() is None
    assert download.state == "error" and "cannot reach the server" in download.error
    assert _usable(download.download_button) and download.cancel_button.disabled

    chat = ChatWidget(client, model=MODEL)
    assert chat.state == "error" and "cannot reach the server" in chat.transcript.value
    chat.send("Hello?").join(10)
    assert chat.state == "error" and "cannot reach the server" in chat.error
    assert _usable(chat.send_button) and chat.stop_button.disabled

    monitor = PoolMonitor(client, interval=0.1)
    try:
        assert "cannot reach the server" in monitor.error and monitor.running  # keeps trying, backing off
    finally:
        monitor.close()
    assert not monitor.running


def test_widgets_recover_from_the_server_going_away(tmp_path):
    (tmp_path / "models").mkdir()
    with jupyter_server(tmp_path, f"--MLXManager.model_dirs={tmp_path / 'models'}") as running:
        client = connect(running.url, running.token)
        picker = ModelPicker(client)
        chat = ChatWidget(client, model=MODEL)
        monitor = PoolMonitor(client, interval=0.2)
        assert picker.state == "idle" and chat.state == "idle" and monitor.error == ""
        try:
            running.process.send_signal(signal.SIGTERM)
            running.process.wait(30)

            picker.model = MODEL
            picker.load().join(30)
            assert picker.state == "error" and picker.error and _usable(picker.load_button, picker.unload_button)
            chat.send("Still there?").join(30)
            assert chat.state == "error" and chat.error and _usable(chat.send_button) and chat.stop_button.disabled
            wait_until(
                lambda: "cannot reach the server" in monitor.error, "the monitor to report the server gone", timeout=10
            )
            assert monitor.running
        finally:
            started = time.monotonic()
            monitor.close()
            assert not monitor.running and time.monotonic() - started < 2.5


def test_pool_monitor_close_stops_its_thread(client):
    monitor = PoolMonitor(client, interval=0.2)
    wait_until(lambda: "<table>" in monitor.table.value, "the pool table", timeout=10)
    assert monitor.running and monitor.thread.daemon
    started = time.monotonic()
    monitor.close()
    assert not monitor.thread.is_alive() and time.monotonic() - started < 2.5
    assert monitor.comm is None  # closed as an ipywidget too


class _Server:
    """Stands in for `MLXClient` under a `Download`: a progress stream that breaks or ends
    early, and a record endpoint; counts the requests."""

    def __init__(self, stream=None, records=()):
        self.stream, self.records = stream, list(records)
        self.streams = self.gets = 0

    def _sse(self, path):
        self.streams += 1
        if self.stream is None:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return iter(self.stream)

    def _get(self, path):
        self.gets += 1
        if not self.records:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return self.records.pop(0) if len(self.records) > 1 else self.records[0]


RECORD = {"id": 7, "repo_id": "org/name", "status": "running", "downloaded_bytes": 0, "total_bytes": 10}


def test_download_wait_follows_again_with_back_off_when_the_stream_ends_early():
    server = _Server(stream=[], records=[RECORD, RECORD, {**RECORD, "status": "completed", "downloaded_bytes": 10}])
    seen = []
    handle = Download(server, RECORD, show_progress=False)
    handle.on_progress(seen.append)
    assert handle.wait(timeout=30)["status"] == "completed"
    assert server.gets == 3 and server.streams == 3  # one record asked for per stream, no spinning
    assert handle.finished and seen[-1]["status"] == "completed"


def test_download_wait_gives_up_on_an_unreachable_server_without_spinning(monkeypatch):
    monkeypatch.setattr(Download, "RECONNECT_SECONDS", 2.0)
    server = _Server()
    handle = Download(server, RECORD, show_progress=False)
    with pytest.raises(MLXManagerError, match="lost contact") as raised:
        handle.wait(timeout=30)
    assert raised.value.reason == "unreachable" and isinstance(handle.error, httpx.ConnectError)
    assert server.streams <= 6  # backing off 0.5 s, 1 s, 2 s…: not a busy loop


def test_download_wait_blocks_on_the_stream():
    def slow():
        for _ in range(5):
            time.sleep(0.1)
            yield RECORD
        yield {**RECORD, "status": "completed"}

    server = _Server(stream=slow())
    handle = Download(server, RECORD, show_progress=False)
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.1)
    assert handle.wait(timeout=30)["status"] == "completed" and server.gets == 0 and server.streams == 1


def test_model_picker_without_models_picks_a_loaded_one(client, server):
    client.load(MODEL)
    try:
        picker = ModelPicker(client)  # as a notebook writes it: nothing given
        assert picker.dropdown.options[0] == MODEL and picker.model == MODEL and picker.state == "loaded"
        assert "demo · random weights" in picker.status.value  # a demo model says what it is
        chosen = ModelPicker(client, models=["local/other", MODEL])
        assert list(chosen.dropdown.options) == ["local/other", MODEL] and chosen.model == MODEL
    finally:
        client.unload(MODEL)


def test_download_widget_shows_why_a_download_failed_and_offers_retry_and_remove(tmp_path):
    env = {"HF_ENDPOINT": "http://nonexistent.invalid", "HF_HOME": str(tmp_path / "hf")}
    with jupyter_server(tmp_path, env=env) as running:
        download = DownloadWidget(connect(running.url, running.token), repo_id="mlx-community/tiny")
        download.start()
        wait_until(lambda: download.state not in ("idle", "downloading"), "the download to end", timeout=60)
        assert download.state == "failed" and "nonexistent.invalid cannot be reached" in download.error
        assert "cannot be reached" in download.label.value and "0/None" not in download.label.value
        assert "of 0 B" not in download.label.value and "GiB" not in download.label.value
        assert download.download_button.description == "Retry" and not download.download_button.disabled
        assert download.remove_button.layout.display != "none"

        download.remove_button.click()
        assert download.state == "idle" and download.remove_button.layout.display == "none"
        assert download.download_button.description == "Download"

        download.download_button.click()  # Retry: a new attempt, failing the same way
        wait_until(lambda: download.state not in ("idle", "downloading"), "the download to end", timeout=60)
        assert download.state == "failed" and "cannot be reached" in download.error


def test_kernel_jobs_finetune_with_a_live_widget_then_evaluate(client, server):
    """`finetune()` returns a handle at once; its widget follows the job to its end (a loss
    chart with axes and a legend), `wait()` returns the adapter; `evaluate()` a table."""
    import json

    (server.root / "fox.jsonl").write_text(
        "".join(json.dumps({"text": "the quick brown fox jumps over the lazy dog"}) + "\n" for _ in range(16))
    )
    job = client.finetune(MODEL, "fox.jsonl", "kernel-fox", iters=30, batch_size=4, learning_rate=0.01, num_layers=2)
    widget = JobWidget(job)
    result = job.wait(timeout=240, progress=False)
    assert result["model"] == "adapter/kernel-fox" and result["train_loss"] > 0
    widget.thread.join(timeout=30)
    assert widget.state == "succeeded" and widget.cancel_button.disabled
    assert widget.bar.value == widget.bar.max == 30
    assert "<svg" in widget.chart.value and "iterations" in widget.chart.value and "train" in widget.chart.value
    assert "adapter/kernel-fox" in widget.label.value

    table = client.evaluate([MODEL, "adapter/kernel-fox"], "fox.jsonl", metrics=["perplexity"]).wait(
        timeout=240, progress=False
    )
    assert [row["model"] for row in table] == [MODEL, "adapter/kernel-fox"]
    assert table[1]["perplexity"] < table[0]["perplexity"]
    assert "<table" in table._repr_html_()

    with pytest.raises(MLXManagerError) as refused:
        client.finetune(MODEL, "missing.jsonl", "nothing")
    assert refused.value.status == 400
