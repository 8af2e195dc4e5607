"""Streaming text filters: reasoning blocks, stop strings and tool-call blocks, on decoded text.

The text-level matching is mlx-lm's own `TextStateMachine` (an Aho-Corasick automaton over
decoded text, robust to how markers are split into tokens): states "normal" (the answer),
"reasoning" (between the chat template's think markers, e.g. `<think>` … `</think>`) and
"tool" (between the tool-call markers); stop strings end the answer. Only a possible partial
match at the end of the text is held back until the next piece decides it.

What mlx-lm lacks and this module adds on top:

* **Stop strings that stop.** mlx_lm.server matches `stop` on tokens and strips the strings
  from the text; here a stop string is a transition to the machine's terminal state, so the
  output ends exactly before the first stop string to complete (in the answer only: a stop
  string inside the reasoning does not end the request).
* **Tool calls parsed as they close**, with the model's tool parser; a block that does not
  parse (or never closes) is returned as the text it was, markers included.
* **Reasoning kept apart**: `Emitted.reasoning` carries the thinking text, `Emitted.text` the
  answer; the markers themselves are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NORMAL, REASONING, TOOL = "normal", "reasoning", "tool"


@dataclass
class Emitted:
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    reasoning: str = ""


class TextFilter:
    def __init__(
        self,
        stop: list[str] | None = None,
        tool_call_start: str | None = None,
        tool_call_end: str | None = None,
        parse_tool_call: Callable[[str], Any] | None = None,
        think_start: str | None = None,
        think_end: str | None = None,
        initial_state: str = NORMAL,
    ):
        from mlx_lm.generate import TextStateMachine

        self.stop = [s for s in (stop or []) if s]
        self.tool_start = tool_call_start if parse_tool_call and tool_call_start else None
        self.tool_end = tool_call_end or ""
        self.parse_tool_call = parse_tool_call
        thinking = bool(think_start and think_end)
        transitions: dict[str, list[tuple[str, str | None]]] = {NORMAL: [(s, None) for s in self.stop]}
        if thinking:
            transitions[NORMAL].append((think_start, REASONING))
            transitions[REASONING] = [(think_end, NORMAL)]
        if self.tool_start:
            transitions[NORMAL].append((self.tool_start, TOOL))
            transitions[TOOL] = [(self.tool_end, NORMAL)] if self.tool_end else []
        if initial_state not in (NORMAL, REASONING) or (initial_state == REASONING and not thinking):
            initial_state = NORMAL
        self._machine = TextStateMachine(transitions)
        self._sm = self._machine.make_state(initial=initial_state)
        self.state: str | None = initial_state
        self._tool_text = ""
        self._strip = initial_state == REASONING  # leading whitespace of a block or of the answer after one
        self.stopped = False
        self.matched_stop: str | None = None  # the stop string that ended the output
        self._recent = ""  # the last characters fed, to tell which stop string matched

    def feed(self, text: str) -> Emitted:
        from mlx_lm.generate import TextStateMachine

        out = Emitted()
        if self.stopped or not text:
            return out
        window = max((len(s) for s in self.stop), default=0)
        recent = self._recent + text
        self._recent = recent[-window:] if window else ""
        self._sm, segments = TextStateMachine.split(self._sm, text)
        for index, (state, piece) in enumerate(segments):
            if index:  # each later segment is a state entered by a transition
                self._transition(self.state, state, out)
                self.state = state
            if state is None:
                self.stopped = out.stopped = True
                self.matched_stop = _first_to_end(recent, self.stop)
                break
            self._add(state, piece, out)
        return out

    def flush(self) -> Emitted:
        """End of generation: release held-back text (an unfinished tool call stays text)."""
        from mlx_lm.generate import TextStateMachine

        out = Emitted()
        if self.stopped:
            return out
        self._sm, rest, _ = TextStateMachine.flush(self._sm)
        self._add(self.state, rest, out)
        if self.state == TOOL:
            call = None if self.tool_end else self._parse(self._tool_text)  # no end marker: ends with the text
            if call is None:
                out.text += self.tool_start + self._tool_text
            else:
                out.tool_calls.append(call)
            self._tool_text = ""
            self.state = NORMAL
        return out

    def _add(self, state: str | None, piece: str, out: Emitted) -> None:
        if self._strip and state != TOOL:
            piece = piece.lstrip()
            self._strip = not piece
        if state == REASONING:
            out.reasoning += piece
        elif state == TOOL:
            self._tool_text += piece
        else:
            out.text += piece

    def _transition(self, old: str | None, new: str | None, out: Emitted) -> None:
        self._strip = REASONING in (old, new)
        if old == TOOL and new == NORMAL:  # the block closed: a call, or text after all
            call = self._parse(self._tool_text)
            if call is None:
                out.text += self.tool_start + self._tool_text + self.tool_end
            else:
                out.tool_calls.append(call)
            self._tool_text = ""

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


def _first_to_end(text: str, candidates: list[str]) -> str | None:
    """The candidate whose first occurrence in `text` ends first (how the automaton stops)."""
    found = [(text.find(c) + len(c), i) for i, c in enumerate(candidates) if c in text]
    return candidates[min(found)[1]] if found else None
