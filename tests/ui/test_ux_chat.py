"""The chat panel (issue 24): replies as Markdown through JupyterLab's rendermime (code
highlighted), copy, regenerate, conversations restored after a reload, reasoning folded away,
tool calls shown, a note on demo models, and "Send to notebook" as a code cell that runs.

Replies come from the real server, except one: the demo models' random weights cannot write
Markdown, so the Markdown test's reply is served by the test in the server's own SSE format.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from playwright.sync_api import Page, expect
from test_panel import CHAT, DEMO, PANEL, open_panel, own_errors, run_command

pytestmark = pytest.mark.ui

REASONING = "local/tiny-reasoning"
TOOLS = "local/tiny-tools"
# Jupyter's ServerConnection adds a cache-busting query string to every request.
COMPLETIONS = re.compile(r".*/mlx/v1/chat/completions(\?[^/]*)?$")

MARKDOWN = (
    "# Result\n\nHere is **bold** text and a list:\n\n- one\n- two\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n"
)


def make_demo(server, name: str, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(server.data_dir), "demo-model"]
        + ["--name", name, *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return f"local/{name}"


def unload_all(server) -> None:
    for model in server.get("mlx/api/pool").json()["models"]:
        server.post("mlx/api/pool/unload", json={"model": model["model"], "force": True})


def load(server, model: str) -> None:
    reply = server.post("mlx/api/pool/load", json={"model": model})
    assert reply.status_code == 200, reply.text


@pytest.fixture
def scripted(lab_server):
    """The scripted reasoning and tool-calling demo models, deleted afterwards."""
    made = [
        make_demo(lab_server, "tiny-reasoning", "--reasoning"),
        make_demo(lab_server, "tiny-tools", "--tool-calling"),
    ]
    yield made
    unload_all(lab_server)
    for model in made:
        lab_server.request("DELETE", f"mlx/api/models/local/{model}?force=1")


def sse_reply(text: str, model: str = DEMO) -> str:
    """A streamed chat completion as the server sends it, in pieces of a few characters."""
    events = []
    envelope = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model}
    for i in range(0, len(text), 7):
        delta = {"content": text[i : i + 7]}
        events.append({**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**envelope, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 30}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def open_chat(page: Page):
    run_command(page, "MLX: Open Chat")
    chat = page.locator(CHAT)
    expect(chat).to_be_visible()
    return chat


def send(chat, text: str):
    """Send a message; the reply (this reply, also once later ones follow)."""
    replies = chat.locator('[data-role="assistant"]')
    reply = replies.nth(replies.count())
    message = chat.get_by_role("textbox", name="Message", exact=True)
    message.fill(text)
    message.press("Enter")
    expect(reply.locator('[data-field="ttft"]')).to_be_visible(timeout=60_000)
    return reply


def test_markdown_copy_regenerate_and_history(lab_server, page: Page, artifacts_dir, console_log):
    unload_all(lab_server)
    load(lab_server, DEMO)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_panel(page, lab_server)
    chat = open_chat(page)
    expect(chat.get_by_label("Chat model")).to_have_value(DEMO)
    # A new chat each run (the browser keeps conversations per server).
    if chat.get_by_role("button", name="New chat").is_enabled():
        chat.get_by_role("button", name="New chat").click()

    # The demo model says what it is.
    note = chat.locator('[data-field="demo-note"]')
    expect(note).to_contain_text("demo model with random weights")

    # Markdown, rendered by JupyterLab's renderer: heading, bold, list, highlighted code.
    page.route(
        COMPLETIONS,
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=sse_reply(MARKDOWN)
        ),
    )
    reply = send(chat, "Show me code")
    content = reply.locator(".jp-MLXChat-content .jp-RenderedMarkdown")
    expect(content.locator("h1")).to_contain_text("Result")
    expect(content.locator("strong")).to_have_text("bold")
    expect(content.locator("li")).to_have_count(2)
    code = content.locator("pre")
    expect(code).to_contain_text("def add(a, b):")
    assert code.locator("span").count() >= 3, code.inner_html()  # highlighted: tokens in spans
    page.unroute(COMPLETIONS)

    # Copy puts the reply's Markdown on the clipboard.
    reply.get_by_role("button", name="Copy reply").click()
    expect(reply.get_by_role("button", name="Copy reply")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN
    page.screenshot(path=str(artifacts_dir / "ux-chat-markdown.png"))

    # A real reply, then Regenerate: the same question asked again, one reply in its place.
    send(chat, "Hello there")
    assert chat.locator('[data-role="assistant"]').count() == 2
    expect(chat.locator('[data-role="assistant"]').first.get_by_role("button", name="Regenerate reply")).to_have_count(
        0
    )
    with page.expect_request(COMPLETIONS) as sent:
        chat.locator('[data-role="assistant"]').last.get_by_role("button", name="Regenerate reply").click()
    body = json.loads(sent.value.post_data or "{}")
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    assert users == ["Show me code", "Hello there"], body["messages"]
    assert body["messages"][-1] == {"role": "user", "content": "Hello there"}
    last = chat.locator('[data-role="assistant"]').last
    expect(last.locator('[data-field="ttft"]')).to_be_visible(timeout=60_000)
    expect(chat.locator('[data-role="assistant"]')).to_have_count(2)
    expect(chat.locator('[data-role="user"]')).to_have_count(2)

    # After a reload the conversation is back, Markdown and all.
    page.reload()
    expect(page.locator(PANEL).or_(page.locator(".jp-Launcher")).first).to_be_visible(timeout=60_000)
    chat = open_chat(page)
    expect(chat.locator('[data-role="user"]')).to_have_count(2, timeout=15_000)
    expect(chat.locator('[data-role="user"]').first).to_contain_text("Show me code")
    expect(chat.locator(".jp-RenderedMarkdown h1")).to_contain_text("Result")
    expect(chat.get_by_role("combobox", name="Conversation")).to_contain_text("Show me code")
    page.screenshot(path=str(artifacts_dir / "ux-chat-restored.png"))

    # A new conversation starts empty; the old one is still there to pick.
    chat.get_by_role("button", name="New chat").click()
    expect(chat.locator('[data-role="user"]')).to_have_count(0)
    conversation = chat.get_by_role("combobox", name="Conversation")
    conversation.select_option(label="Show me code")
    expect(chat.locator('[data-role="user"]')).to_have_count(2)
    assert not own_errors(console_log), own_errors(console_log)


def test_reasoning_tool_calls_and_send_to_notebook(lab_server, scripted, page: Page, artifacts_dir, console_log):
    unload_all(lab_server)
    load(lab_server, REASONING)
    load(lab_server, TOOLS)
    open_panel(page, lab_server)
    chat = open_chat(page)
    if chat.get_by_role("button", name="New chat").is_enabled():
        chat.get_by_role("button", name="New chat").click()
    chat.get_by_label("Chat model").select_option(REASONING)
    chat.get_by_label("Temperature").fill("0")
    chat.get_by_label("Max tokens").fill("64")

    # The thinking model's reasoning is folded away under the answer's head.
    reply = send(chat, "Hi!")
    reasoning = reply.locator('[data-field="reasoning"]')
    expect(reasoning).to_be_visible()
    expect(reasoning).not_to_have_attribute("open", "")
    expect(reply.locator(".jp-MLXChat-content")).to_contain_text("The answer is 42.")
    expect(reply.locator(".jp-MLXChat-content")).not_to_contain_text("The user greets me")
    reasoning.locator("summary").click()
    expect(reasoning).to_contain_text("The user greets me. I will answer briefly.")

    # Tool calls are shown (the request carries a tool: the panel passes on what the model calls).
    def with_tool(route):
        body = json.loads(route.request.post_data or "{}")
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ]
        route.continue_(post_data=json.dumps(body))

    page.route(COMPLETIONS, with_tool)
    chat.get_by_label("Chat model").select_option(TOOLS)
    tool_reply = send(chat, "Weather in Paris?")
    call = tool_reply.locator('[data-field="tool-call"][data-tool="get_weather"]')
    expect(call).to_be_visible()
    expect(call).to_contain_text('"city": "Paris"')
    page.unroute(COMPLETIONS)
    page.screenshot(path=str(artifacts_dir / "ux-chat-reasoning-tools.png"))

    # Send to notebook: no notebook is open, so a new one gets the exchange as a code cell.
    reply.get_by_role("button", name="Send to notebook").click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook).to_be_visible(timeout=30_000)
    cell = notebook.locator(".jp-CodeCell").first
    expect(cell).to_contain_text("from jupyter_mlx_manager import connect")
    expect(cell).to_contain_text(f'client.chat("{REASONING}", messages, max_tokens=64, temperature=0)')
    # It runs in the kernel and asks the same model again: the same scripted answer.
    expect(page.locator(".jp-StatusBar-Item", has_text=re.compile(r"Python 3.*\| Idle"))).to_be_visible(timeout=120_000)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-OutputArea-output")).to_contain_text("The answer is 42.", timeout=120_000)
    page.screenshot(path=str(artifacts_dir / "ux-send-to-notebook.png"))
    assert not own_errors(console_log), own_errors(console_log)
