"""System text where the model's chat template can take it.

Agents send system text mid-conversation (Claude Code's reminders are `role: "system"`
messages between turns). Many chat templates render a system turn anywhere (Qwen, Llama 3);
others drop it silently or raise ("roles must alternate"). `place_system_messages` keeps
such messages in place where the template renders them there, and otherwise folds each into
the neighbouring user turn, so the text always reaches the model. The runner (mlx-lm's
template) and the server's token counter (inference/tokens.py, Jinja) both use it, so a
count matches the prompt the runner builds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PROBE = "mlx-manager-system-probe-7f3a"
_PROBE_MESSAGES = [
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
    {"role": "system", "content": PROBE},
    {"role": "user", "content": "v"},
]


def renders_system_mid_conversation(render: Callable[[list[dict[str, Any]]], str]) -> bool:
    """Whether `render` (messages → prompt text) keeps a system turn after the first turn."""
    try:
        return PROBE in render([dict(m) for m in _PROBE_MESSAGES])
    except Exception:  # the template refuses it
        return False


def _joined(texts: list[str]) -> str:
    return "\n\n".join(t for t in texts if t)


def _prefix(message: dict[str, Any], text: str, before: bool) -> dict[str, Any]:
    """`message` (a user turn) with `text` added before (or after) its content."""
    content = message.get("content")
    if isinstance(content, list):
        part = {"type": "text", "text": text}
        return {**message, "content": [part, *content] if before else [*content, part]}
    content = content if isinstance(content, str) else ""
    return {**message, "content": _joined([text, content] if before else [content, text])}


def place_system_messages(
    messages: list[dict[str, Any]], mid_conversation_ok: Callable[[], bool]
) -> list[dict[str, Any]]:
    """Leading system messages joined into one; later ones kept in place if
    `mid_conversation_ok()` (asked only when there are some), else folded into the next user
    turn (at the end: the end of a last user turn, else a user turn of their own)."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    head = messages[:lead]
    if lead > 1:
        head = [{"role": "system", "content": _joined([str(m.get("content") or "") for m in head])}]
    rest = messages[lead:]
    if not any(m.get("role") == "system" for m in rest):
        return head + rest
    if mid_conversation_ok():
        return head + rest
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in rest:
        if message.get("role") == "system":
            pending.append(str(message.get("content") or ""))
            continue
        if pending and message.get("role") == "user":
            message, pending = _prefix(message, _joined(pending), before=True), []
        out.append(message)
    if pending:  # nothing follows: the end of the last user turn, or a user turn of its own
        if out and out[-1].get("role") == "user":
            out[-1] = _prefix(out[-1], _joined(pending), before=False)
        else:
            out.append({"role": "user", "content": _joined(pending)})
    return head + out
