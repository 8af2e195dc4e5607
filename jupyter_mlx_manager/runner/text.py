"""Streaming text filters: stop strings and tool-call blocks, applied to decoded text.

mlx_lm.server matches `stop` on tokens and then strips text, which can cut words elsewhere
or miss a stop split across tokens. Here the text itself is scanned: output stops exactly
before the first occurrence of any stop string, and only a possible partial match at the
end is held back until the next piece of text decides it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Emitted:
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False


class TextFilter:
    def __init__(
        self,
        stop: list[str] | None = None,
        tool_call_start: str | None = None,
        tool_call_end: str | None = None,
        parse_tool_call: Callable[[str], Any] | None = None,
    ):
        self.stop = [s for s in (stop or []) if s]
        self.tool_start = tool_call_start if parse_tool_call else None
        self.tool_end = tool_call_end
        self.parse_tool_call = parse_tool_call
        self._pending = ""
        self._in_tool = False
        self._tool_text = ""
        self.stopped = False

    def feed(self, text: str) -> Emitted:
        out = Emitted()
        if self.stopped:
            return out
        self._pending += text
        while self._pending:
            if self._in_tool:
                end = self._pending.find(self.tool_end)
                if end < 0:
                    self._tool_text += self._pending
                    self._pending = ""
                    break
                self._tool_text += self._pending[:end]
                self._pending = self._pending[end + len(self.tool_end) :]
                call = self._parse(self._tool_text)
                if call is None:  # not a valid call: it was text after all
                    out.text += self.tool_start + self._tool_text + self.tool_end
                else:
                    out.tool_calls.append(call)
                self._in_tool, self._tool_text = False, ""
                continue
            markers = [(m, "stop") for m in self.stop] + ([(self.tool_start, "tool")] if self.tool_start else [])
            hits = [(self._pending.find(m), kind, m) for m, kind in markers if m in self._pending]
            if hits:
                position, kind, marker = min(hits)
                out.text += self._pending[:position]
                if kind == "stop":
                    self._pending, self.stopped, out.stopped = "", True, True
                    break
                self._pending = self._pending[position + len(marker) :]
                self._in_tool = True
                continue
            keep = self._partial_suffix([m for m, _ in markers])
            out.text += self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(self._pending) - keep :]
            break
        return out

    def flush(self) -> Emitted:
        """End of generation: release held-back text (an unfinished tool call stays text)."""
        out = Emitted()
        if not self.stopped:
            out.text = (self.tool_start + self._tool_text if self._in_tool else "") + self._pending
        self._pending, self._tool_text, self._in_tool = "", "", False
        return out

    def _partial_suffix(self, markers: list[str]) -> int:
        """Length of the longest end of the pending text that could begin a marker."""
        longest = 0
        for marker in markers:
            for size in range(min(len(marker) - 1, len(self._pending)), longest, -1):
                if marker.startswith(self._pending[-size:]):
                    longest = size
                    break
        return longest

    def _parse(self, text: str) -> dict[str, Any] | None:
        try:
            call = self.parse_tool_call(text)
        except Exception:  # a parser may raise anything on malformed model output
            return None
        if not isinstance(call, dict) or not call.get("name"):
            return None
        arguments = call.get("arguments", {})
        return {
            "name": str(call.get("name", "")),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        }
