"""The MLX sidebar, status bar, commands and chat panel in a real JupyterLab, driven by headless Chromium.

The session's server has the offline demo model `local/tiny-demo` (see conftest.py). Tests run
in file order and share that server: the model loaded by the chat test stays loaded.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

PANEL = '[id="jupyter-mlx-manager:panel"]'
TAB = '.jp-SideBar.jp-mod-left [data-id="jupyter-mlx-manager:panel"]'
CHAT = '[id="jupyter-mlx-manager:chat"]'
STATUS_ITEM = ".jp-MLXStatus"
DEMO = "local/tiny-demo"
EOS_ID = "2"  # <|im_end|> of the demo model's tokenizer

pytestmark = pytest.mark.ui


def open_panel(page: Page, server) -> None:
    # A fresh workspace each time: a layout restored from an earlier test could have the panel open already.
    page.goto(f"{server.url}lab/workspaces/ui-{uuid.uuid4().hex[:8]}?token={server.token}")
    tab = page.locator(TAB)
    expect(tab).to_be_visible(timeout=60_000)
    tab.click()
    expect(page.locator(PANEL)).to_be_visible()


def open_section(page: Page, name: str):
    panel = page.locator(PANEL)
    panel.locator(f'[role="tab"][data-section="{name}"]').click()
    section = panel.locator(f'[role="tabpanel"][data-section="{name}"]')
    expect(section).to_be_visible()
    return section


def run_command(page: Page, label: str) -> None:
    """Through the command palette, with the keyboard only."""
    palette = page.locator(".lm-CommandPalette-input")
    for attempt in range(3):
        # The shortcut toggles the palette: press it only while the palette is closed (pressing
        # again while a slow page is still opening it would close it). A palette that closes
        # again before it can be typed into (focus moving on a loaded 2-core machine) is
        # opened once more.
        if not palette.is_visible():
            page.keyboard.press("Control+Shift+C")
        try:
            expect(palette).to_be_visible(timeout=10_000)
            palette.focus()
            palette.fill(label, timeout=10_000)
            break
        except (AssertionError, PlaywrightError):
            if attempt == 2:
                raise
    page.keyboard.press("Enter")


def device_text(device: dict) -> str:
    name, kind = device.get("name"), device.get("type")
    return f"{name} ({kind})" if name and kind and name != kind else (name or kind)


def own_errors(console_log: list[str]) -> list[str]:
    return [m for m in console_log if "jupyter-mlx-manager" in m and m.startswith(("error", "pageerror"))]


def test_panel_shows_server_status(lab_server, page: Page, artifacts_dir, console_log):
    reply = lab_server.get("mlx/api/status")
    assert reply.status_code == 200, reply.text
    status = reply.json()

    open_panel(page, lab_server)
    panel = page.locator(PANEL)
    expect(panel.locator('[data-field="version"]')).to_have_text(status["version"])
    expect(panel.locator('[data-field="device"]')).to_have_text(device_text(status["device"]))
    expect(panel.locator('[data-field="memory"]')).to_contain_text("free of")
    expect(panel.locator('[data-field="pool"]')).to_contain_text("models loaded")
    expect(panel.get_by_role("alert")).to_have_count(0)
    # The local models, with the demo model, are the first section.
    expect(panel.locator(f'[data-model="{DEMO}"]')).to_be_visible()
    expect(page.locator(STATUS_ITEM)).to_contain_text("MLX: 0 models")
    page.screenshot(path=str(artifacts_dir / "mlx-panel.png"))

    # The refresh button works from the keyboard.
    button = panel.get_by_role("button", name="Refresh status")
    button.focus()
    with page.expect_response(re.compile(r"/mlx/api/status(\?|$)")) as response:
        page.keyboard.press("Enter")
    assert response.value.status == 200

    # Tabs follow the arrow keys (roving focus, as ARIA tabs do).
    models_tab = panel.get_by_role("tab", name="Models")
    models_tab.focus()
    page.keyboard.press("ArrowRight")
    expect(panel.get_by_role("tab", name="Downloads")).to_be_focused()
    expect(panel.get_by_role("tab", name="Downloads")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Home")
    expect(models_tab).to_have_attribute("aria-selected", "true")

    assert not own_errors(console_log), own_errors(console_log)


def test_load_chat_stop_and_live_activity(lab_server, page: Page, artifacts_dir, console_log):
    open_panel(page, lab_server)
    panel = page.locator(PANEL)

    # Models: load the demo model.
    item = panel.locator(f'[data-model="{DEMO}"]')
    item.get_by_role("button", name=f"Load {DEMO}").click()
    expect(item.locator(".jp-MLXPanel-badge", has_text="loaded")).to_be_visible(timeout=60_000)
    expect(page.locator(STATUS_ITEM)).to_contain_text("MLX: 1 model")

    # The status bar item opens the Pool, where the model has a memory bar against the budget.
    page.locator(STATUS_ITEM).click()
    pool = panel.locator('[role="tabpanel"][data-section="pool"]')
    expect(pool).to_be_visible()
    loaded = pool.locator(f'[data-model="{DEMO}"]')
    expect(loaded.get_by_role("meter", name=f"Memory of {DEMO}")).to_have_attribute(
        "aria-valuenow", re.compile(r"^\d+$")
    )
    expect(pool.get_by_role("meter", name="Pool memory in use")).to_be_visible()
    # Pin, then keep-alive: both go through the pool API and show up.
    loaded.get_by_role("button", name=f"Pin {DEMO}").click()
    expect(loaded.get_by_role("button", name=f"Unpin {DEMO}")).to_have_attribute("aria-pressed", "true")
    expect(loaded.locator(".jp-MLXPanel-badge", has_text="pinned")).to_be_visible()
    loaded.get_by_role("button", name=f"Unpin {DEMO}").click()
    expect(loaded.locator(".jp-MLXPanel-badge", has_text="pinned")).to_have_count(0)
    loaded.get_by_label(f"Keep-alive of {DEMO}").select_option("3600")
    expect(loaded).to_contain_text(re.compile(r"unloads in (59\s*min|1\s*h)"))
    assert lab_server.get("mlx/api/pool").json()["models"][0]["keep_alive"] == 3600
    page.screenshot(path=str(artifacts_dir / "mlx-pool.png"))

    # Activity follows the audit trail live (WebSocket with a ticket).
    activity = open_section(page, "activity")
    expect(activity.locator('[data-field="connection"]')).to_have_text("Live", timeout=15_000)
    # Counted on the server: the section's first page may still be on its way when the feed is live.
    chats_before = sum(
        r["action"] == "chat.completions"
        for r in lab_server.get("mlx/api/audit", params={"limit": 100}).json()["records"]
    )
    audit_requests: list[str] = []
    page.on("request", lambda r: audit_requests.append(r.url) if "/mlx/api/audit?" in r.url else None)

    def no_eos(route):  # the random-weights demo model could sample EOS first: an empty reply
        body = json.loads(route.request.post_data or "{}")
        body["logit_bias"] = {EOS_ID: -100}
        route.continue_(post_data=json.dumps(body))

    page.route(re.compile(r".*/mlx/v1/chat/completions(\?[^/]*)?$"), no_eos)
    # Open the chat from the command palette; the loaded model is chosen.
    run_command(page, "MLX: Open Chat")
    chat = page.locator(CHAT)
    expect(chat).to_be_visible()
    expect(chat.get_by_label("Chat model")).to_have_value(DEMO)
    message = chat.get_by_role("textbox", name="Message", exact=True)
    message.fill("Hello there")
    message.press("Enter")
    reply = chat.locator('[data-role="assistant"]').last
    expect(reply.locator('[data-field="ttft"]')).to_contain_text(re.compile(r"TTFT \d"), timeout=60_000)
    expect(reply.locator('[data-field="tps"]')).to_contain_text(re.compile(r"\d+(\.\d)? tok/s"))
    assert reply.locator(".jp-MLXChat-content").inner_text().strip(), "the reply is empty"

    # The request appears in Activity without reloading it.
    expect(activity.locator('[data-action="chat.completions"]')).to_have_count(chats_before + 1, timeout=15_000)
    expect(activity.locator('[data-action="chat.completions"]').first).to_contain_text(DEMO)
    assert not audit_requests, f"Activity was reloaded instead of updated live: {audit_requests}"
    page.screenshot(path=str(artifacts_dir / "mlx-chat.png"))

    # Export: a plain download link with a ticket.
    with page.expect_download() as download:
        activity.get_by_role("button", name="Export CSV").click()
    exported = Path(download.value.path()).read_text()
    assert exported.startswith("id,request_id,time,"), exported[:200]
    assert "chat.completions" in exported and DEMO in exported

    # Stop a long reply (EOS is suppressed, so it cannot end on its own first).
    chat.get_by_label("Max tokens").fill("1500")
    message.fill("Tell me a long story")
    message.press("Enter")
    expect(chat.get_by_role("button", name="Stop generating")).to_be_visible()
    reply = chat.locator('[data-role="assistant"]').last
    expect(reply.locator(".jp-MLXChat-content")).not_to_have_text("", timeout=30_000)
    message.press("Escape")  # the keyboard way to press Stop
    expect(reply.locator('[data-field="stopped"]')).to_be_visible(timeout=10_000)
    expect(chat.get_by_role("button", name="Send message")).to_be_visible()
    cancelled = activity.locator('[data-action="chat.completions"]', has_text="cancelled")
    expect(cancelled).to_have_count(1, timeout=15_000)
    page.screenshot(path=str(artifacts_dir / "mlx-chat-stopped.png"))

    assert not own_errors(console_log), own_errors(console_log)


def test_load_model_command(lab_server, page: Page, artifacts_dir):
    if any(m["model"] == DEMO for m in lab_server.get("mlx/api/pool").json()["models"]):
        assert lab_server.post("mlx/api/pool/unload", json={"model": DEMO}).status_code == 200
    open_panel(page, lab_server)
    expect(page.locator(STATUS_ITEM)).to_contain_text("MLX: 0 models")
    run_command(page, "MLX: Load Model…")
    dialog = page.locator(".jp-Dialog")
    expect(dialog.get_by_role("combobox")).to_have_value(DEMO)
    page.screenshot(path=str(artifacts_dir / "mlx-load-command.png"))
    page.keyboard.press("Enter")
    expect(page.locator(STATUS_ITEM)).to_contain_text("MLX: 1 model", timeout=30_000)
    expect(page.locator(".jp-Notification-Toast-success, .Toastify__toast--success")).to_contain_text(
        f"{DEMO} is loaded"
    )


def set_theme(server, theme: str) -> None:
    reply = server.request(
        "PUT",
        "lab/api/settings/@jupyterlab/apputils-extension:themes",
        json={"raw": json.dumps({"theme": theme})},
    )
    assert reply.status_code == 204, reply.text


def test_dark_theme(lab_server, page: Page, artifacts_dir):
    reply = lab_server.post("mlx/api/pool/load", json={"model": DEMO})
    assert reply.status_code == 200, reply.text
    set_theme(lab_server, "JupyterLab Dark")
    try:
        open_panel(page, lab_server)
        expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false", timeout=15_000)
        open_section(page, "pool")
        run_command(page, "MLX: Open Chat")
        chat = page.locator(CHAT)
        message = chat.get_by_role("textbox", name="Message", exact=True)
        message.fill("Hi")
        message.press("Enter")
        expect(chat.locator('[data-role="assistant"] [data-field="ttft"]')).to_be_visible(timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "mlx-dark.png"))
    finally:
        set_theme(lab_server, "JupyterLab Light")


def test_pending_user_waits_until_an_admin_approves(lab_server, browser, page: Page, artifacts_dir):
    reply = requests.post(
        lab_server.url + "mlx/api/auth/register",
        json={"username": "bob-ui", "password": "correct horse battery"},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    bob = reply.json()
    assert bob["status"] == "pending"
    token = lab_server.jwt_for(bob["id"])

    # Bob's browser: every MLX request carries his JWT (he cannot log in while pending).
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        bob_page = context.new_page()
        bob_page.set_default_timeout(30_000)
        bob_page.route(
            re.compile(r".*/mlx/(api|v1)/.*"),
            lambda route: route.continue_(headers={**route.request.headers, "authorization": f"Bearer {token}"}),
        )
        open_panel(bob_page, lab_server)
        bob_panel = bob_page.locator(PANEL)
        alert = bob_panel.get_by_role("alert")
        expect(alert).to_contain_text("Pending approval")
        expect(alert).to_contain_text("waiting for an administrator's approval")
        expect(bob_panel.get_by_role("tab")).to_have_count(0)
        expect(bob_page.locator(STATUS_ITEM)).to_contain_text("pending approval")
        bob_page.screenshot(path=str(artifacts_dir / "mlx-panel-pending.png"))

        # The owner (an admin) sees a badge on Users and approves Bob there.
        open_panel(page, lab_server)
        users_tab = page.locator(PANEL).get_by_role("tab", name=re.compile("^Users"))
        expect(users_tab.locator(".jp-MLXPanel-tabBadge")).to_have_text("1", timeout=15_000)
        users = open_section(page, "users")
        row = users.locator('[data-user="bob-ui"]')
        expect(row.locator(".jp-MLXPanel-badge", has_text="pending")).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "mlx-users.png"))
        row.get_by_role("button", name="Approve bob-ui").click()
        expect(row.locator(".jp-MLXPanel-badge", has_text="approved")).to_be_visible()
        expect(users_tab.locator(".jp-MLXPanel-tabBadge")).to_have_count(0)

        # Bob's panel notices on its next refresh: sections, no Users tab (not an admin).
        expect(alert).to_have_count(0, timeout=20_000)
        expect(bob_panel.get_by_role("tab", name="Models")).to_be_visible()
        expect(bob_panel.get_by_role("tab", name=re.compile("^Users"))).to_have_count(0)
        expect(bob_panel.locator('[data-field="user"]')).to_have_text("bob-ui")
        bob_page.screenshot(path=str(artifacts_dir / "mlx-panel-approved.png"))
    finally:
        context.close()


def downloads_or_skip(server) -> None:
    reply = server.get("mlx/api/downloads")
    if reply.status_code == 404:
        pytest.skip("the server has no mlx/api/downloads yet (downloads are built in parallel)")
    assert reply.status_code == 200, reply.text
    if server.hub is None:
        pytest.skip("no jupyter_mlx_manager.devhub to download from")


def test_search_and_download_with_progress(lab_server, page: Page, artifacts_dir, console_log):
    downloads_or_skip(lab_server)
    lab_server.hub.throttle_bps = 120_000  # the 429 kB weights take about 4 s: progress is visible
    repo = "mlx-test/tiny-chat"
    open_panel(page, lab_server)
    panel = page.locator(PANEL)

    # Hub search (through the server) finds the repo; download it from the result.
    panel.get_by_role("searchbox", name="Search query").fill("tiny-chat")
    panel.get_by_role("button", name="Search", exact=True).click()
    result = panel.locator(f'[data-repo="{repo}"]')
    expect(result).to_be_visible(timeout=15_000)
    result.get_by_role("button", name=f"Download {repo}").click()
    panel.get_by_role("button", name="Show downloads").click()

    # Live progress over SSE: a progress bar, bytes, rate and time left; then completed.
    item = panel.locator(f'[data-download="{repo}"]')
    expect(item.get_by_role("progressbar")).to_be_visible()
    expect(item.locator('[data-field="rate"]')).to_contain_text("/s", timeout=15_000)
    expect(item.locator('[data-field="progress"]')).to_contain_text(" of ")
    page.screenshot(path=str(artifacts_dir / "mlx-downloads.png"))
    expect(item.locator(".jp-MLXPanel-badge")).to_have_text("completed", timeout=60_000)
    expect(item.locator('[data-field="progress"]')).to_contain_text("100%")

    # The model is now on this machine.
    models = open_section(page, "models")
    expect(models.locator(f'[data-model="{repo}"]')).to_be_visible(timeout=15_000)
    assert not own_errors(console_log), own_errors(console_log)


def test_cancel_a_download(lab_server, page: Page):
    downloads_or_skip(lab_server)
    lab_server.hub.throttle_bps = 10_000  # slow enough to cancel
    repo = "mlx-test/tiny-slow"
    try:
        open_panel(page, lab_server)
        downloads = open_section(page, "downloads")
        field = downloads.get_by_label("Download a model from the Hub")
        field.fill(repo)
        field.press("Enter")
        item = downloads.locator(f'[data-download="{repo}"]')
        expect(item.get_by_role("progressbar")).to_be_visible()
        expect(page.locator(PANEL).get_by_role("tab", name=re.compile("^Downloads"))).to_contain_text("1")
        item.get_by_role("button", name=f"Cancel download of {repo}").click()
        expect(item.locator(".jp-MLXPanel-badge")).to_have_text("cancelled", timeout=15_000)
        expect(item.get_by_role("button", name=f"Cancel download of {repo}")).to_have_count(0)
    finally:
        lab_server.hub.throttle_bps = None


def test_panel_reports_unreachable_server(lab_server, page: Page):
    page.route(re.compile(r".*/mlx/api/status(\?.*)?$"), lambda route: route.abort("connectionrefused"))
    open_panel(page, lab_server)
    expect(page.locator(PANEL).get_by_role("alert")).to_contain_text("Server unreachable")
    expect(page.locator(STATUS_ITEM)).to_contain_text("MLX: offline")
