"""The sidebar as a new user meets it (issue 24): actions by kind, full model ids, the memory
estimate before Load (fits / would unload which), pinned models without a keep-alive choice,
one context figure, a Hub search that outlives switching tabs, and Activity's chart with axes,
units and a legend, audio counted in seconds.

The session server (conftest.py) gets more demo models here — an embedding, a transcription and
a speech model — which are deleted again at the end (the other browser tests share the server).
"""

from __future__ import annotations

import io
import math
import re
import struct
import subprocess
import sys
import wave

import pytest
from playwright.sync_api import Page, expect
from test_panel import DEMO, open_panel, open_section, own_errors

pytestmark = pytest.mark.ui

EMBEDDING = "local/tiny-embedding"
TRANSCRIPTION = "local/tiny-transcription"
SPEECH = "local/tiny-speech"


def make_demo(server, kind: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_mlx_manager.cli",
            "--data-dir",
            str(server.data_dir),
            "demo-model",
            "--kind",
            kind,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return f"local/tiny-{kind}"


def unload_all(server) -> None:
    for model in server.get("mlx/api/pool").json()["models"]:
        server.post("mlx/api/pool/unload", json={"model": model["model"], "force": True})


@pytest.fixture
def kinds(lab_server):
    """The demo models of three more kinds, deleted afterwards."""
    made = [make_demo(lab_server, kind) for kind in ("embedding", "transcription", "speech")]
    yield made
    unload_all(lab_server)
    for model in made:
        lab_server.request("DELETE", f"mlx/api/models/local/{model}?force=1")


def wav_second(rate: int = 16000) -> bytes:
    """One second of a 440 Hz tone, 16-bit mono WAV."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(rate))
        )
    return out.getvalue()


def test_actions_by_kind_estimate_and_pins(lab_server, kinds, page: Page, artifacts_dir, console_log):
    unload_all(lab_server)
    open_panel(page, lab_server)
    models = open_section(page, "models")

    # Every model id is shown in full (wrapped, never cut), with its kind and the demo label.
    for model in (DEMO, *kinds):
        title = models.locator(f'[data-model="{model}"] .jp-MLXPanel-itemTitle')
        expect(title).to_have_text(model)
        assert title.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), f"{model} is cut"
        expect(models.locator(f'[data-model="{model}"] [data-field="demo"]')).to_have_text("demo · random weights")

    # Before Load: the estimate, and that it fits now.
    estimate = models.locator(f'[data-model="{DEMO}"] [data-field="estimate"]')
    expect(estimate).to_contain_text(re.compile(r"needs ≈ \d+(\.\d)?\s(KiB|MiB|GiB) · fits \("))
    page.screenshot(path=str(artifacts_dir / "ux-models-estimate.png"))

    # Load one model of each kind; only the chat model offers Chat.
    for model in (DEMO, EMBEDDING, TRANSCRIPTION):
        models.get_by_role("button", name=f"Load {model}").click()
        expect(models.locator(f'[data-model="{model}"] .jp-MLXPanel-badge', has_text="loaded")).to_be_visible(
            timeout=120_000
        )
    expect(models.get_by_role("button", name=f"Chat with {DEMO}")).to_be_visible()
    for model in (EMBEDDING, TRANSCRIPTION):
        expect(models.get_by_role("button", name=f"Chat with {model}")).to_have_count(0)

    # The pool is full (3 of 3 models): the speech model would unload the least recently used one.
    pool = lab_server.get("mlx/api/pool").json()
    assert len(pool["models"]) == pool["limits"]["max_loaded_models"] == 3, pool
    oldest = min(pool["models"], key=lambda m: m["last_used"] or "")["model"]
    speech_estimate = models.locator(f'[data-model="{SPEECH}"] [data-field="estimate"]')
    expect(speech_estimate).to_have_attribute("data-fit", "evicts")
    expect(speech_estimate).to_contain_text(f"would unload {oldest}")
    models.locator(f'[data-model="{SPEECH}"]').scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "ux-models-kinds.png"))

    # One context figure: the catalog's, the same in Models and Pool; none for audio models.
    described = {m["id"]: m for m in lab_server.get("mlx/api/models/local").json()["models"]}
    context = f"{described[DEMO]['context_length']:,}".replace(",", "")
    demo_context = models.locator(f'[data-model="{DEMO}"] .jp-MLXPanel-fact', has_text="context")
    expect(models.locator(f'[data-model="{TRANSCRIPTION}"] .jp-MLXPanel-fact', has_text="context")).to_have_count(0)
    shown = demo_context.locator("dd").inner_text()

    # Pin the chat model: the pool shows no keep-alive choice for it, the others keep theirs.
    assert lab_server.post("mlx/api/pool/load", json={"model": DEMO, "pin": True}).status_code == 200
    pool_section = open_section(page, "pool")
    pinned = pool_section.locator(f'[data-model="{DEMO}"]')
    expect(pinned.locator(".jp-MLXPanel-badge", has_text="pinned")).to_be_visible(timeout=15_000)
    expect(pinned.get_by_label(f"Keep-alive of {DEMO}")).to_have_count(0)
    expect(pool_section.get_by_label(f"Keep-alive of {EMBEDDING}")).to_be_visible()
    expect(pinned.locator(".jp-MLXPanel-fact", has_text="context").locator("dd")).to_have_text(shown)
    assert shown in (context, f"{int(context) / 1000:.1f}k", f"{int(context) // 1000}k"), (shown, context)
    expect(pool_section.locator(f'[data-model="{TRANSCRIPTION}"] .jp-MLXPanel-fact', has_text="context")).to_have_count(
        0
    )
    expect(pool_section.get_by_role("button", name=f"Chat with {EMBEDDING}")).to_have_count(0)
    # Loading with Pin checked: no keep-alive to choose either.
    load_form = pool_section.locator("form").first
    expect(load_form.get_by_label("Keep-alive of the model to load")).to_be_visible()
    load_form.get_by_label("Pin").check()
    expect(load_form.get_by_label("Keep-alive of the model to load")).to_have_count(0)
    expect(load_form.locator('[data-field="estimate"]')).to_contain_text("needs ≈")
    page.screenshot(path=str(artifacts_dir / "ux-pool-pinned.png"))
    assert lab_server.post("mlx/api/pool/load", json={"model": DEMO, "pin": False}).status_code == 200

    # An embedding model's action instead of Chat: a code cell that uses it, which runs.
    models = open_section(page, "models")
    models.get_by_role("button", name=f"Use {EMBEDDING} in a notebook").click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook).to_be_visible(timeout=30_000)
    cell = notebook.locator(".jp-CodeCell").first
    expect(cell).to_contain_text(f'vectors = client.embed("{EMBEDDING}", ["first text", "second text"])')
    expect(page.locator(".jp-StatusBar-Item", has_text=re.compile(r"Python 3.*\| Idle"))).to_be_visible(timeout=120_000)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-OutputArea-output")).to_have_text(re.compile(r"^\(2, \d+\)$"), timeout=120_000)
    page.screenshot(path=str(artifacts_dir / "ux-use-in-notebook.png"))
    assert not own_errors(console_log), own_errors(console_log)


def test_hub_search_outlives_switching_tabs(lab_server, page: Page, artifacts_dir):
    if lab_server.hub is None:
        pytest.skip("no jupyter_mlx_manager.devhub to search")
    open_panel(page, lab_server)
    models = open_section(page, "models")
    models.get_by_role("searchbox", name="Search query").fill("tiny-chat")
    models.get_by_role("button", name="Search", exact=True).click()
    result = models.locator('[data-repo="mlx-test/tiny-chat"]')
    expect(result).to_be_visible(timeout=15_000)

    open_section(page, "pool")
    models = open_section(page, "models")
    expect(models.get_by_role("searchbox", name="Search query")).to_have_value("tiny-chat")
    expect(models.locator('[data-repo="mlx-test/tiny-chat"]')).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "ux-search-kept.png"))
    models.get_by_role("button", name="Clear search results").click()
    expect(models.locator('[data-repo="mlx-test/tiny-chat"]')).to_have_count(0)


def test_activity_chart_axes_and_audio_seconds(lab_server, kinds, page: Page, artifacts_dir, console_log):
    # Requests of three kinds: chat (tokens), transcription (one second of audio in), speech.
    reply = lab_server.post(
        "mlx/v1/chat/completions",
        json={"model": DEMO, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
    )
    assert reply.status_code == 200, reply.text
    reply = lab_server.post(
        "mlx/v1/audio/transcriptions",
        data={"model": TRANSCRIPTION},
        files={"file": ("tone.wav", wav_second(), "audio/wav")},
    )
    assert reply.status_code == 200, reply.text
    reply = lab_server.post("mlx/v1/audio/speech", json={"model": SPEECH, "input": "Hello there"})
    assert reply.status_code == 200, reply.text

    records = lab_server.get("mlx/api/audit?limit=100").json()["records"]
    transcription = next(r for r in records if r["action"] == "transcriptions")
    assert transcription["prompt_tokens"] >= 16000  # the samples in, which are not tokens

    open_panel(page, lab_server)
    activity = open_section(page, "activity")
    chart = activity.locator('[data-field="token-chart"]')
    expect(chart).to_be_visible(timeout=15_000)
    # Axes: value ticks on the left (0 and more), clock times below; a legend and the unit.
    y_labels = chart.locator('[data-axis="y"] text')
    expect(y_labels.first).to_have_text("0")
    assert y_labels.count() >= 3
    x_labels = chart.locator('[data-axis="x"] text')
    assert x_labels.count() >= 1
    expect(x_labels.first).to_have_text(re.compile(r"^\d\d:\d\d(:\d\d)?$"))
    expect(chart.locator('[data-field="legend"]')).to_contain_text("prompt")
    expect(chart.locator('[data-field="legend"]')).to_contain_text("completion")
    expect(chart.locator('[data-field="unit"]')).to_contain_text(re.compile(r"tokens per \d"))

    # Audio is counted in seconds, in its own chart; the token total has no audio samples in it.
    audio = activity.locator('[data-field="audio-chart"]')
    expect(audio).to_be_visible()
    expect(audio.locator('[data-field="unit"]')).to_contain_text("seconds per")
    shown = activity.locator(f'[data-record-id="{transcription["id"]}"]')
    expect(shown).to_contain_text(re.compile(r"1(\.0)? s audio → \d+ tok"))
    expect(shown).not_to_contain_text(re.compile(r"16(\.0)?k"))
    total = chart.locator('[data-field="chart-total"]').inner_text()
    number, thousands = re.match(r"([\d.]+)(k?) tokens in all", total).groups()
    assert 0 < float(number) * (1000 if thousands else 1) < 16000, total
    chart.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "ux-activity-chart.png"))
    assert not own_errors(console_log), own_errors(console_log)


def test_failed_download_shows_why_and_offers_retry_and_remove(lab_server, page: Page, artifacts_dir):
    if lab_server.hub is None:
        pytest.skip("no jupyter_mlx_manager.devhub to download from")
    repo = "mlx-test/not-there"  # the stand-in Hub has no such repo: the download fails
    open_panel(page, lab_server)
    downloads = open_section(page, "downloads")
    field = downloads.get_by_label("Download a model from the Hub")
    field.fill(repo)
    field.press("Enter")
    item = downloads.locator(f'[data-download="{repo}"]')
    expect(item.locator(".jp-MLXPanel-badge")).to_have_text("failed", timeout=30_000)
    expect(item.locator('[data-field="reason"]')).not_to_be_empty()
    expect(item.get_by_role("button", name=f"Cancel download of {repo}")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "ux-download-failed.png"))

    # Retry starts it again (a new record); it fails again, for the same reason.
    before = len(lab_server.get("mlx/api/downloads").json()["downloads"])
    with page.expect_response(
        lambda r: r.url.split("?")[0].endswith("/mlx/api/downloads") and r.request.method == "POST"
    ):
        item.first.get_by_role("button", name=f"Retry download of {repo}").click()
    assert len(lab_server.get("mlx/api/downloads").json()["downloads"]) == before + 1
    expect(downloads.locator(f'[data-download="{repo}"] .jp-MLXPanel-badge').first).to_have_text(
        "failed", timeout=30_000
    )

    # Remove takes each off the list.
    while downloads.locator(f'[data-download="{repo}"]').count():
        count = downloads.locator(f'[data-download="{repo}"]').count()
        downloads.locator(f'[data-download="{repo}"]').first.get_by_role(
            "button", name=f"Remove download of {repo}"
        ).click()
        expect(downloads.locator(f'[data-download="{repo}"]')).to_have_count(count - 1)
