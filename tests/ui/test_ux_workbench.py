"""The sidebar's workbench, usage and profiles (issue: JupyterLab side of jobs, budgets and
profiles): a real tiny fine-tune started from the Jobs form, its live loss chart, the adapter it
makes loaded and chatted with; an evaluation's table; usage per day and every user's budget
left in Activity; profiles listed beside the models, created, edited, chatted with and deleted.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest
import requests
from playwright.sync_api import Page, expect
from test_panel import CHAT, DEMO, PANEL, open_panel, open_section, own_errors

pytestmark = pytest.mark.ui

SENTENCE = "the quick brown fox jumps over the lazy dog"


def jupyter_root(server):
    """The server's root_dir (conftest.py makes it beside the MLX data dir)."""
    return server.data_dir.parent / "notebooks"


def unload(server, model: str) -> None:
    server.post("mlx/api/pool/unload", json={"model": model, "force": True})


def test_finetune_live_loss_chart_adapter_load_chat_and_evaluate(lab_server, page: Page, artifacts_dir, console_log):
    (jupyter_root(lab_server) / "wb-train.jsonl").write_text(
        "".join(json.dumps({"text": SENTENCE}) + "\n" for _ in range(16))
    )
    name = f"wb-fox-{secrets.token_hex(3)}"
    adapter = f"adapter/{name}"
    open_panel(page, lab_server)
    jobs = open_section(page, "jobs")
    form = jobs.get_by_role("form", name="Fine-tune a model")
    expect(form.get_by_label("Model")).to_have_value(DEMO)
    form.get_by_label("Data (JSONL)").fill("wb-train.jsonl")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Iterations").fill("20")
    form.get_by_label("Batch size").fill("4")
    form.get_by_label("Learning rate").fill("0.01")
    form.get_by_label("LoRA rank").fill("8")
    form.get_by_label("Layers").fill("2")
    form.get_by_label("Validation share").fill("0.25")
    events: list[str] = []
    page.on("request", lambda r: events.append(r.url) if re.search(r"/mlx/api/jobs/[^/]+/events", r.url) else None)
    form.get_by_role("button", name="Start fine-tune").click()

    item = jobs.locator(".jp-MLXPanel-item", has_text=f"→ {name}")
    expect(item).to_be_visible()
    # The loss chart fills while the job runs (its event stream, with a ticket in ?token=).
    chart = item.locator('[data-field="loss-chart"]')
    expect(chart.locator('polyline[data-series="train"]')).to_be_visible(timeout=240_000)
    expect(chart.locator('[data-axis="y"] text').first).to_have_text(re.compile(r"^0\.00$"))
    expect(chart.locator('[data-axis="x"] text').last).to_have_text("iteration")
    expect(chart.locator('[data-field="legend"]')).to_contain_text("validation loss")
    assert events and all("token=" in url for url in events), events
    if item.get_attribute("data-status") == "running":
        expect(item.get_by_role("button", name=re.compile("^Cancel"))).to_be_visible()
        chart.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "mlx-jobs-running.png"))

    # Done: the adapter, with Load; once loaded, Chat (the same commands as in Models).
    expect(item).to_have_attribute("data-status", "succeeded", timeout=240_000)
    expect(item.locator('[data-field="adapter"]')).to_contain_text(adapter)
    expect(item.get_by_role("button", name=re.compile("^Cancel"))).to_have_count(0)
    job = next(j for j in lab_server.get("mlx/api/jobs").json()["jobs"] if j["params"].get("name") == name)
    curve = [p for p in job["progress"]["curve"] if "train_loss" in p]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"], curve
    # The chart shows the server's last losses.
    expect(chart.locator('[data-field="last-loss"]')).to_contain_text(f"train {curve[-1]['train_loss']:.2f}")
    assert len(chart.locator('polyline[data-series="train"]').get_attribute("points").split()) == len(curve)
    validation = [p for p in job["progress"]["curve"] if "val_loss" in p]
    assert validation, job["progress"]["curve"]  # a quarter of the data held out
    expect(chart.locator(".jp-MLXPanel-lossValPoint")).to_have_count(len(validation))
    expect(chart.locator('[data-field="last-loss"]')).to_contain_text(f"validation {validation[-1]['val_loss']:.2f}")
    item.get_by_role("button", name=f"Load {adapter}").click()
    expect(item.get_by_role("button", name=f"Chat with {adapter}")).to_be_visible(timeout=120_000)
    assert adapter in {m["model"] for m in lab_server.get("mlx/api/pool").json()["models"]}
    item.get_by_role("button", name=f"Chat with {adapter}").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "mlx-jobs-finetune.png"))
    item.get_by_role("button", name=f"Chat with {adapter}").click()
    chat = page.locator(CHAT)
    expect(chat.get_by_label("Chat model")).to_have_value(adapter)

    # An evaluation (started from a notebook or the API) shows its results as a table.
    (jupyter_root(lab_server) / "wb-eval.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [{"text": SENTENCE}] * 2 + [
            {"question": "the quick brown fox", "choices": ["jumps over the lazy dog", "reads"], "answer": 0}
        ])
    )  # fmt: skip
    created = lab_server.post(
        "mlx/api/jobs", json={"type": "evaluate", "models": [DEMO, adapter], "data": "wb-eval.jsonl"}
    )
    assert created.status_code == 202, created.text
    evaluation = jobs.locator(f'[data-job="{created.json()["id"]}"]')
    expect(evaluation).to_have_attribute("data-status", "succeeded", timeout=240_000)
    table = evaluation.get_by_role("table", name="Evaluation results")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").nth(1).locator("td").first).to_have_text(adapter)
    expect(table.locator("tbody tr td").nth(1)).to_have_text(re.compile(r"^\d+\.\d\d$"))
    expect(table.locator("tbody tr td").nth(2)).to_have_text(re.compile(r"^\d+%$"))
    evaluation.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "mlx-jobs-evaluate.png"))
    assert not own_errors(console_log), own_errors(console_log)

    unload(lab_server, adapter)
    lab_server.request("DELETE", f"mlx/api/models/local/{adapter}?force=1")


def test_usage_per_day_and_every_users_budget(lab_server, page: Page, artifacts_dir, console_log):
    # A second user with a request of their own, and budgets: a daily one for everyone, a
    # monthly one for that user; no minute budget (unlimited).
    reply = requests.post(
        lab_server.url + "mlx/api/auth/register",
        json={"username": "carol-ui", "password": "correct horse battery"},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    carol = reply.json()
    assert lab_server.request("PATCH", f"mlx/api/users/{carol['id']}", json={"status": "approved"}).ok
    budgets = {"default": {"tokens_per_day": 100_000}, "users": {"carol-ui": {"tokens_per_month": 5_000}}}
    assert lab_server.request("PUT", "mlx/api/budgets", json=budgets).ok
    try:
        body = {"model": DEMO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        mine = lab_server.post("mlx/v1/chat/completions", json=body)
        assert mine.status_code == 200, mine.text
        theirs = requests.post(
            lab_server.url + "mlx/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {lab_server.jwt_for(carol['id'])}"},
            timeout=120,
        )
        assert theirs.status_code == 200, theirs.text
        status = lab_server.get("mlx/api/budgets").json()
        carol_left = next(u for u in status["users"] if u["user"] == "carol-ui")["windows"]["tokens_per_month"]

        open_panel(page, lab_server)
        activity = open_section(page, "activity")
        usage = activity.locator('[data-field="usage-budgets"]')
        chart = usage.locator('[data-field="usage-chart"]')
        expect(chart.locator('[data-field="unit"]')).to_have_text("tokens per day (UTC)")
        expect(chart.locator('[data-axis="y"] text').first).to_have_text("0")
        expect(chart.locator('[data-axis="x"] text')).to_have_count(3)
        usage_rows = lab_server.get("mlx/api/usage", params={"group_by": "day"}).json()["rows"]
        today = usage_rows[-1]
        expect(chart.locator(f'[data-day="{today["key"]}"] title')).to_contain_text(
            f"{today['prompt_tokens']:,} prompt, {today['completion_tokens']:,} completion tokens"
        )

        # The admin sees every user's budget left; "unlimited" where there is no limit.
        me = usage.locator('[data-user="' + status["user"] + '"]')
        expect(me).to_contain_text("(you)")
        day = status["windows"]["tokens_per_day"]
        expect(me.locator('[data-window="tokens_per_day"] [data-field="budget-left"]')).to_have_text(
            f"{day['remaining']:,} of 100,000 tokens left"
        )
        expect(me.locator('[data-window="tokens_per_minute"] [data-field="budget-left"]')).to_have_text(
            re.compile(r"^unlimited \(\d[\d,]* used\)$")
        )
        theirs_card = usage.locator('[data-user="carol-ui"]')
        expect(theirs_card.locator('[data-window="tokens_per_month"] [data-field="budget-left"]')).to_have_text(
            f"{carol_left['remaining']:,} of 5,000 tokens left"
        )
        assert carol_left["used"] > 0
        expect(theirs_card.get_by_role("meter", name="carol-ui's tokens used this month")).to_be_visible()
        usage.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "mlx-activity-budgets.png"))

        # Carol sees her own budget only.
        context = page.context.browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            carol_page = context.new_page()
            token = lab_server.jwt_for(carol["id"])
            carol_page.route(
                re.compile(r".*/mlx/(api|v1)/.*"),
                lambda route: route.continue_(headers={**route.request.headers, "authorization": f"Bearer {token}"}),
            )
            open_panel(carol_page, lab_server)
            own = open_section(carol_page, "activity").locator('[data-field="usage-budgets"]')
            expect(own.locator('[data-user="carol-ui"]')).to_contain_text("(you)")
            expect(own.locator("[data-user]")).to_have_count(1)
            expect(own).to_contain_text("Your budget left")
        finally:
            context.close()
        assert not own_errors(console_log), own_errors(console_log)
    finally:
        lab_server.request(
            "PUT", "mlx/api/budgets", json={"default": {"tokens_per_day": 0}, "users": {"carol-ui": None}}
        )
        unload(lab_server, DEMO)


def test_profiles_beside_models_create_edit_chat_delete(lab_server, page: Page, artifacts_dir, console_log):
    name = f"wb-coder-{secrets.token_hex(2)}"
    open_panel(page, lab_server)
    models = open_section(page, "models")
    profiles = models.get_by_role("region", name="Profiles")
    profiles.get_by_role("button", name="New profile").click()
    editor = profiles.get_by_role("form", name="New profile")
    editor.get_by_label("Name").fill(name)
    editor.get_by_label("Models, in order").fill(f"{DEMO}\nlocal/not-here")
    editor.get_by_label("Temperature").fill("0.2")
    editor.get_by_label("Max tokens").fill("abc")
    editor.get_by_role("button", name="Save profile").click()
    expect(editor.get_by_role("alert")).to_have_text("Max tokens: a whole number of at least 1.")
    editor.get_by_label("Max tokens").fill("24")
    editor.get_by_label("System prompt").fill("You are terse.")
    editor.get_by_role("button", name="Save profile").click()

    item = profiles.locator(f'[data-profile="{name}"]')
    expect(item.get_by_role("list", name="Models, in order").locator("li")).to_have_text([DEMO, "local/not-here"])
    expect(item).to_contain_text("temperature 0.2 · max 24 tokens")
    expect(item).to_contain_text("System: You are terse.")
    assert lab_server.get(f"mlx/api/profiles/{name}").json()["models"] == [DEMO, "local/not-here"]

    # Edit: the editor holds the profile; what it does not show is kept.
    assert lab_server.request("PUT", f"mlx/api/profiles/{name}", json={
        "models": [DEMO, "local/not-here"], "system": "You are terse.", "temperature": 0.2, "max_tokens": 24,
        "top_p": 0.9}).ok  # fmt: skip
    open_panel(page, lab_server)
    models = open_section(page, "models")
    item = models.locator(f'[data-profile="{name}"]')
    item.get_by_role("button", name=f"Edit profile {name}").click()
    editor = models.get_by_role("form", name=f"Edit profile {name}")
    expect(editor.get_by_label("Temperature")).to_have_value("0.2")
    editor.get_by_label("Temperature").fill("0.5")
    editor.get_by_role("button", name="Save profile").click()
    expect(item).to_contain_text("temperature 0.5 · top_p 0.9 · max 24 tokens")
    saved = lab_server.get(f"mlx/api/profiles/{name}").json()
    assert (saved["temperature"], saved["top_p"], saved["max_tokens"]) == (0.5, 0.9, 24)
    item.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "mlx-models-profiles.png"))

    # Chat with the profile: its name is the model; its first model answers.
    lab_server.post("mlx/api/pool/load", json={"model": DEMO})
    item.get_by_role("button", name=f"Chat with profile {name}").click()
    chat = page.locator(CHAT)
    expect(chat.get_by_label("Chat model")).to_have_value(name)
    message = chat.get_by_role("textbox", name="Message", exact=True)
    message.fill("Hello profile")
    message.press("Enter")
    reply = chat.locator('[data-role="assistant"]').last
    expect(reply.locator('[data-field="ttft"]')).to_contain_text(re.compile(r"TTFT \d"), timeout=60_000)
    records = lab_server.get("mlx/api/audit", params={"limit": 5}).json()["records"]
    asked = next(r for r in records if r["action"] == "chat.completions")
    assert (asked.get("requested_model"), asked["model"]) == (name, DEMO), asked

    # Delete.
    item.get_by_role("button", name=f"Delete profile {name}").click()
    expect(models.locator(f'[data-profile="{name}"]')).to_have_count(0)
    assert lab_server.get(f"mlx/api/profiles/{name}").status_code == 404
    assert not own_errors(console_log), own_errors(console_log)
    unload(lab_server, DEMO)


def test_cancel_a_running_finetune(lab_server, page: Page, console_log):
    (jupyter_root(lab_server) / "wb-train.jsonl").write_text(
        "".join(json.dumps({"text": SENTENCE}) + "\n" for _ in range(16))
    )
    name = f"wb-long-{secrets.token_hex(3)}"
    open_panel(page, lab_server)
    form = open_section(page, "jobs").get_by_role("form", name="Fine-tune a model")
    form.get_by_label("Data (JSONL)").fill("wb-train.jsonl")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Iterations").fill("5000")  # a loss point every 100 iterations
    form.get_by_label("Layers").fill("1")
    form.get_by_role("button", name="Start fine-tune").click()
    item = page.locator(PANEL).locator(".jp-MLXPanel-item", has_text=f"→ {name}")
    # Running, with losses coming in; then Cancel stops it.
    expect(item.locator('polyline[data-series="train"]')).to_be_visible(timeout=240_000)
    expect(item).to_have_attribute("data-status", "running")
    jobs_tab = page.locator(PANEL).get_by_role("tab", name=re.compile("^Jobs"))
    expect(jobs_tab.locator(".jp-MLXPanel-tabBadge")).to_have_attribute("title", "1 job queued or running")
    item.get_by_role("button", name=re.compile("^Cancel")).click()
    expect(item).to_have_attribute("data-status", "cancelled")
    expect(jobs_tab.locator(".jp-MLXPanel-tabBadge")).to_have_count(0)
    expect(item.locator('[data-field="job-error"]')).to_contain_text("cancelled by")
    expect(item.get_by_role("button", name=re.compile("^Cancel"))).to_have_count(0)
    expect(item.locator('[data-field="adapter"]')).to_have_count(0)
    job = next(j for j in lab_server.get("mlx/api/jobs").json()["jobs"] if j["params"].get("name") == name)
    assert job["status"] == "cancelled" and job["progress"]["iteration"] < 5000, job
    assert not own_errors(console_log), own_errors(console_log)
