"""The MLX sidebar panel in a real JupyterLab, driven by headless Chromium."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

PANEL = '[id="jupyter-mlx-manager:panel"]'
TAB = '.jp-SideBar.jp-mod-left [data-id="jupyter-mlx-manager:panel"]'

pytestmark = pytest.mark.ui


def open_panel(page: Page, server) -> None:
    page.goto(f"{server.url}lab?token={server.token}")
    tab = page.locator(TAB)
    expect(tab).to_be_visible(timeout=60_000)
    tab.click()
    expect(page.locator(PANEL)).to_be_visible()


def device_text(device: dict) -> str:
    name, kind = device.get("name"), device.get("type")
    return f"{name} ({kind})" if name and kind and name != kind else (name or kind)


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
    page.screenshot(path=str(artifacts_dir / "mlx-panel.png"))

    # The refresh button works from the keyboard.
    button = panel.get_by_role("button", name="Refresh status")
    button.focus()
    with page.expect_response(re.compile(r"/mlx/api/status(\?|$)")) as response:
        page.keyboard.press("Enter")
    assert response.value.status == 200

    errors = [m for m in console_log if "jupyter-mlx-manager" in m and m.startswith(("error", "pageerror"))]
    assert not errors, errors


def test_panel_shows_pending_approval(lab_server, page: Page, artifacts_dir):
    message = "Your account is waiting for an administrator's approval."
    page.route(
        re.compile(r".*/mlx/api/status(\?.*)?$"),
        lambda route: route.fulfill(
            status=403,
            content_type="application/json",
            body=json.dumps({"message": message, "reason": "pending"}),
        ),
    )
    open_panel(page, lab_server)
    alert = page.locator(PANEL).get_by_role("alert")
    expect(alert).to_contain_text("Pending approval")
    expect(alert).to_contain_text(message)
    page.screenshot(path=str(artifacts_dir / "mlx-panel-pending.png"))


def test_panel_reports_unreachable_server(lab_server, page: Page):
    page.route(re.compile(r".*/mlx/api/status(\?.*)?$"), lambda route: route.abort("connectionrefused"))
    open_panel(page, lab_server)
    expect(page.locator(PANEL).get_by_role("alert")).to_contain_text("Server unreachable")
