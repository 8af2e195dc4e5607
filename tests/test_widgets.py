"""The notebook widgets, driven the way a user would, against a real server process."""

from __future__ import annotations

import time

import pytest
from models import build_models, eos_id
from servers import jupyter_server

from jupyter_mlx_manager import connect
from jupyter_mlx_manager.widgets import ChatWidget, ModelPicker, PoolMonitor

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


def _until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_model_picker_loads_unloads_and_reports_errors(client):
    picker = ModelPicker(client)
    assert MODEL in picker.dropdown.options and picker.state == "idle"
    picker.model = MODEL
    picker.load_button.click()
    assert picker.state == "loading" and picker.load_button.disabled  # the cell is free while it loads
    _until(lambda: picker.state != "loading")
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
        _until(lambda: MODEL in monitor.table.value)
        assert monitor.memory.value > 0 and monitor.memory.max >= monitor.memory.value
        client.unload(MODEL)
        _until(lambda: "no model loaded" in monitor.table.value, timeout=10)
    finally:
        monitor.stop()


def test_chat_widget_streams_and_stops(client, server):
    client.load(MODEL)
    no_eos = {str(eos_id(server.models / "tiny-demo")): -100}
    chat = ChatWidget(client, model=MODEL, max_tokens=12, logit_bias=no_eos)
    chat.prompt.value = "Hello there"
    chat.send_button.click()
    _until(lambda: chat.state != "generating")
    assert chat.state == "idle" and "Hello there" in chat.transcript.value
    assert chat.messages[-1]["role"] == "assistant" and chat.messages[-1]["content"]

    long_chat = ChatWidget(client, model=MODEL, max_tokens=4000, logit_bias=no_eos)
    thread = long_chat.send("Go on forever")
    _until(lambda: len(long_chat.messages[-1]["content"]) > 0)
    long_chat.stop_button.click()
    thread.join(10)
    assert long_chat.state == "idle" and long_chat.stop_button.disabled
    _until(lambda: all(m["in_flight"] == 0 for m in client.pool()["models"]), timeout=5)
