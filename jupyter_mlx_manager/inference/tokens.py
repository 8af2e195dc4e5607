"""Counting prompt tokens in the server process, without MLX and without a runner.

The model's `tokenizer.json` is read with `tokenizers` (Rust) and its chat template rendered
with Jinja (sandboxed, as transformers does it), so `messages/count_tokens` costs no runner
slot. The count matches the runner's `prompt_tokens` for the same request.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from ..models.inspection import chat_template_text
from ..runner.templates import place_system_messages, renders_system_mid_conversation

CACHE_SIZE = 4


class TokenCounter:
    def __init__(self) -> None:
        self._loaded: OrderedDict[Path, tuple[Any, Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._mid_system_of: dict[Path, bool] = {}

    def _load(self, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
        with self._lock:
            if folder in self._loaded:
                self._loaded.move_to_end(folder)
                return self._loaded[folder]
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BadRequest("this model has no tokenizer.json to count tokens with", reason="invalid_request_error")
        tokenizer = Tokenizer.from_file(str(path))
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        template = None
        source = _first_template(folder, config)
        if source:

            def raise_exception(message):
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii
            )
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
            template = env.from_string(source)
        entry = (tokenizer, template, config)
        with self._lock:
            self._loaded[folder] = entry
            while len(self._loaded) > CACHE_SIZE:
                self._loaded.popitem(last=False)
        return entry

    def _mid_system(self, folder: Path, render: Any) -> bool:
        """Whether this model's template renders a system turn mid-conversation (asked once)."""
        if folder not in self._mid_system_of:
            self._mid_system_of[folder] = renders_system_mid_conversation(render)
        return self._mid_system_of[folder]

    def count(self, folder: Path, command: dict[str, Any]) -> int:
        """Blocking: run off the event loop."""
        tokenizer, template, config = self._load(folder)
        if command.get("kind") == "chat":
            if template is None:
                raise BadRequest("this model has no chat template", reason="invalid_request_error")

            def render(messages: list[dict[str, Any]], **extra: Any) -> str:
                return template.render(
                    messages=messages,
                    bos_token=_token_text(config.get("bos_token")),
                    eos_token=_token_text(config.get("eos_token")),
                    **extra,
                )

            extra = {}
            if isinstance(command.get("reasoning"), bool) and _thinks(tokenizer):
                extra["enable_thinking"] = command["reasoning"]  # as the runner renders it
            try:
                messages = place_system_messages(command["messages"], lambda: self._mid_system(folder, render))
                text = render(messages, tools=command.get("tools"), add_generation_prompt=True, **extra)
            except Exception as exc:
                raise BadRequest(
                    f"the chat template rejected these messages: {exc}", reason="invalid_messages"
                ) from None
            return len(tokenizer.encode(text, add_special_tokens=False).ids)
        prompt = command.get("prompt")
        if isinstance(prompt, list):
            return len(prompt)
        return len(tokenizer.encode(prompt or "").ids)


def _thinks(tokenizer: Any) -> bool:
    """A thinking model as mlx-lm tells one (think markers in its vocabulary)."""
    return tokenizer.token_to_id("<think>") is not None and tokenizer.token_to_id("</think>") is not None


def _first_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    return chat_template_text(folder, {}) or None


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return value if isinstance(value, str) else ""
