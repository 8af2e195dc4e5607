"""Inline completion and "This notebook" in a real JupyterLab (headless Chromium): typing in a
notebook cell shows ghost text from the demo model; Activity's "This notebook" filter shows only
that notebook's requests (the browser's completions carry the notebook's kernel id)."""

from __future__ import annotations

import json
import uuid

import nbformat
import pytest
from playwright.sync_api import Page, expect
from test_panel import DEMO, PANEL, TAB, open_section
from waiting import wait_until

pytestmark = pytest.mark.ui


def _settings(server, plugin: str, values: dict) -> None:
    reply = server.request("PUT", f"lab/api/settings/{plugin}", data=json.dumps({"raw": json.dumps(values)}))
    assert reply.status_code in (200, 204), reply.text


def test_ghost_text_and_this_notebook(lab_server, page: Page, artifacts_dir):
    try:
        _ghost_text_and_this_notebook(lab_server, page, artifacts_dir)
    finally:  # the other browser tests share this server: leave it as it was
        _settings(lab_server, "jupyter-mlx-manager:plugin", {})
        lab_server.post("mlx/api/pool/unload", json={"model": DEMO, "force": True})


def _ghost_text_and_this_notebook(lab_server, page: Page, artifacts_dir):
    name = f"ghost-{uuid.uuid4().hex[:6]}.ipynb"
    notebook = nbformat.v4.new_notebook()
    # With a kernelspec JupyterLab starts the kernel itself (no "Select Kernel" dialog).
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    reply = lab_server.request(
        "PUT", f"api/contents/{name}", data=json.dumps({"type": "notebook", "content": notebook})
    )
    assert reply.status_code in (200, 201), reply.text
    assert lab_server.post("mlx/api/pool/load", json={"model": DEMO}).status_code == 200
    _settings(lab_server, "jupyter-mlx-manager:plugin", {"inlineCompletionModel": DEMO, "inlineCompletionMaxTokens": 8})

    # A fresh workspace with only this notebook open.
    page.goto(f"{lab_server.url}lab/workspaces/ui-{uuid.uuid4().hex[:8]}/tree/{name}?token={lab_server.token}")
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    expect(editor).to_be_visible(timeout=60_000)
    # Wait for the notebook's kernel: the completions then carry its id.
    wait_until(
        lambda: any(s["path"] == name and s.get("kernel") for s in lab_server.get("api/sessions").json()),
        "the notebook's kernel to start",
        timeout=60,
        interval=0.5,
    )
    editor.click()
    page.keyboard.type("def fib(", delay=30)
    ghost = page.locator('.jp-GhostText[data-provided-by="jupyter-mlx-manager"]')
    expect(ghost).to_be_visible(timeout=20_000)
    page.screenshot(path=str(artifacts_dir / "mlx-inline-completion.png"))

    # The record is written when the stream ends, which may be just after the ghost text shows.
    def notebook_completions():
        records = lab_server.get("mlx/api/audit", params={"notebook": name}).json()["records"]
        return [r for r in records if r["action"] == "completions"]

    completions = wait_until(notebook_completions, "the completions to be audited with this notebook", timeout=15)
    assert all(r["kernel_id"] for r in completions), completions

    # Activity: "This notebook" shows only this notebook's requests.
    lab_server.post(
        "mlx/v1/chat/completions", json={"model": DEMO, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    )
    page.locator(TAB).click()
    expect(page.locator(PANEL)).to_be_visible()
    activity = open_section(page, "activity")
    activity.get_by_label("This notebook").check()
    expect(activity.locator('[data-field="focused-notebook"]')).to_contain_text(name)
    notebooks = activity.locator('.jp-MLXPanel-record [data-field="notebook"]')
    expect(notebooks.first).to_have_text(name, timeout=15_000)
    expect(activity.locator(".jp-MLXPanel-record")).to_have_count(notebooks.count())
    expect(activity.locator('[data-field="token-chart"]')).to_be_visible()
    page.locator(PANEL).screenshot(path=str(artifacts_dir / "mlx-activity-this-notebook.png"))
