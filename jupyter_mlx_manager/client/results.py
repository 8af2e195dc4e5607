"""Results that display richly in a notebook and still behave as plain Python values.

- `ChatResult` / `CompletionResult`: `str` subclasses (equality, slicing, `json.dumps`,
  f-strings all see the text) that render as Markdown with a footer: model, tokens, time to
  first token, tokens per second.
- `Table`: a `list` of dict rows (`local_models()`, `search()`, `audit()`) that renders as an
  HTML table; `.to_pandas()` when pandas is installed.
- `PoolStatus`: the `dict` `pool()` returns, rendering its memory summary and models table;
  `ServerStatus`: the `dict` `status()` returns, rendering as a table of the same style.

Sizes are shown one way everywhere (`format_bytes`); demo models carry `DEMO_LABEL`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

MAX_HTML_ROWS = 200
DEMO_LABEL = "demo · random weights"
# Code blocks and code spans of a reply: Markdown shows them as text, so they keep their `<`.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`)", re.DOTALL)
_TAG = re.compile(r"<(?=[A-Za-z/!?])")


def markdown_text(text: str) -> str:
    """A model's reply as Markdown that cannot carry raw HTML (it is untrusted text rendered in
    a trusted output): `<` that would open a tag is escaped outside code."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = _TAG.sub("&lt;", parts[i])
    return "".join(parts)


class TextResult(str):
    """Generated text with what the server reported about it (`usage`, timings, `raw` reply)."""

    kind = "text"

    def __new__(
        cls,
        text: str,
        *,
        model: str | None = None,
        usage: dict[str, Any] | None = None,
        ttft_s: float | None = None,
        duration_s: float | None = None,
        finish_reason: str | None = None,
        raw: dict[str, Any] | None = None,
    ):
        self = super().__new__(cls, text)
        self.model = model
        self.usage = dict(usage or {})
        self.ttft_s = ttft_s
        self.duration_s = duration_s
        self.finish_reason = finish_reason
        self.raw = raw
        return self

    @property
    def text(self) -> str:
        """The text as a plain `str`."""
        return str.__str__(self)

    @property
    def prompt_tokens(self) -> int | None:
        return self.usage.get("prompt_tokens")

    @property
    def completion_tokens(self) -> int | None:
        return self.usage.get("completion_tokens")

    @property
    def cached_tokens(self) -> int | None:
        details = self.usage.get("prompt_tokens_details") or {}
        return details.get("cached_tokens") if isinstance(details, dict) else None

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second of decoding (after the first token, when TTFT is known)."""
        if not self.completion_tokens or not self.duration_s:
            return None
        decoding = self.duration_s - (self.ttft_s or 0.0)
        if self.ttft_s is not None and self.completion_tokens > 1 and decoding > 0:
            return (self.completion_tokens - 1) / decoding
        return self.completion_tokens / self.duration_s

    def footer(self) -> str:
        parts = []
        if self.model:
            parts.append(f"`{self.model.replace('`', '')}`")
        if self.usage:
            tokens = f"{self.prompt_tokens or 0} prompt + {self.completion_tokens or 0} completion tokens"
            if self.cached_tokens:
                tokens += f" ({self.cached_tokens} cached)"
            parts.append(tokens)
        parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "TTFT —")
        rate = self.tokens_per_second
        parts.append(f"{rate:.1f} tok/s" if rate is not None else "— tok/s")
        if self.finish_reason and self.finish_reason != "stop":
            parts.append(f"finish: {self.finish_reason}")
        return " · ".join(parts)

    def _repr_markdown_(self) -> str:
        body = markdown_text(self.text) if self.text.strip() else "*(empty reply)*"
        return f"{body}\n\n---\n<sub>{self.footer()}</sub>\n"


class ChatResult(TextResult):
    """A chat reply: its text, plus `tool_calls` (a list, possibly empty) and `message`."""

    kind = "chat"

    @property
    def message(self) -> dict[str, Any]:
        try:
            return self.raw["choices"][0]["message"]  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            return {"role": "assistant", "content": self.text}

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return list(self.message.get("tool_calls") or [])


class CompletionResult(TextResult):
    kind = "completion"


# -- tables ------------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    """A size as everything here shows one: binary units, one decimal (`512 B`, `3.2 MiB`,
    `1.5 GiB`)."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "demo":
        return DEMO_LABEL if value else ""
    if isinstance(value, bool):
        return "✓" if value else ""
    if column.endswith("_bytes") and isinstance(value, (int, float)):
        return format_bytes(value)
    if column == "parameters" and isinstance(value, (int, float)):
        return _count(value)
    if column.endswith("_ms") and isinstance(value, (int, float)):
        return f"{value:.0f} ms"
    if column == "quantization" and isinstance(value, dict):
        bits = value.get("bits")
        return f"{bits}-bit" if bits else ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value[:8]) + (" …" if len(value) > 8 else "")
    return str(value)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("to_pandas() needs pandas, which is not installed here: pip install pandas") from None
    return pandas


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, empty: str = "no rows") -> str:
    """An HTML table of `rows` (dicts), showing `columns` (those present) or every key."""
    present: dict[str, None] = {}
    for row in rows:
        present.update(dict.fromkeys(row))
    shown = [c for c in columns or () if c in present] or list(present) or list(columns or ())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c, row.get(c)))}</td>" for c in shown) + "</tr>"
        for row in rows[:MAX_HTML_ROWS]
    )
    if not rows:
        body = f"<tr><td colspan={max(len(shown), 1)}><em>{html.escape(empty)}</em></td></tr>"
    more = f"<p><em>… {len(rows) - MAX_HTML_ROWS} more rows</em></p>" if len(rows) > MAX_HTML_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


class Table(list):
    """A list of records (dicts) that renders as an HTML table in a notebook."""

    columns: tuple[str, ...] = ()
    title = ""
    empty = "no rows"

    def __init__(self, rows: Iterable[dict[str, Any]] = (), title: str | None = None):
        super().__init__(rows)
        if title is not None:
            self.title = title

    def _repr_html_(self) -> str:
        caption = f"<p><strong>{html.escape(self.title)}</strong> ({len(self)})</p>" if self.title else ""
        return caption + html_table(self, self.columns, self.empty)

    def to_pandas(self):
        """A `pandas.DataFrame` with every field of every record (ImportError without pandas)."""
        return _pandas().DataFrame(list(self))


class LocalModels(Table):
    columns = ("id", "kind", "architecture", "parameters", "quantization", "size_bytes", "context_length", "loaded",
               "downloading", "tool_calling", "demo")  # fmt: skip
    empty = "no local models"


class SearchResults(Table):
    columns = ("id", "author", "architecture", "parameters", "quantization", "size_bytes", "downloads", "likes",
               "gated", "local")  # fmt: skip
    empty = "no models found"


class AuditRecords(Table):
    columns = ("time", "user", "client", "action", "model", "status", "notebook", "prompt_tokens", "cached_tokens",
               "completion_tokens", "ttft_ms", "duration_ms", "error_type")  # fmt: skip
    empty = "no audit records"


class UsageRows(Table):
    columns = ("key", "requests", "prompt_tokens", "completion_tokens", "cached_tokens", "audio_seconds")
    empty = "no usage yet"


class PoolModels(Table):
    columns = ("model", "status", "pinned", "memory_bytes", "requests", "in_flight", "context_length", "pid",
               "expires_at")  # fmt: skip
    empty = "no model loaded"


class PoolStatus(dict):
    """The pool's state (the dict the API returns); renders its memory and its models table."""

    def __init__(self, status: dict[str, Any] | None = None):
        super().__init__(status or {})
        if isinstance(self.get("models"), list):
            self["models"] = PoolModels(self["models"])

    @property
    def models(self) -> PoolModels:
        models = self.get("models")
        return models if isinstance(models, PoolModels) else PoolModels(models or [])

    def _repr_html_(self) -> str:
        summary = [f"{len(self.models)} loaded"]
        used = self.get("memory_used_bytes")
        budget = (self.get("limits") or {}).get("max_memory_bytes")
        if isinstance(used, (int, float)):
            summary.append(
                f"memory {format_bytes(used)}"
                + (f" of {format_bytes(budget)}" if isinstance(budget, (int, float)) else "")
            )
        loading = self.get("loading") or []
        if loading:
            summary.append("loading: " + ", ".join(str(m) for m in loading))
        caption = "<p><strong>Model pool</strong>: " + html.escape(" · ".join(summary)) + "</p>"
        return caption + html_table(self.models, PoolModels.columns, PoolModels.empty)

    def to_pandas(self):
        """The loaded models as a `pandas.DataFrame` (ImportError without pandas)."""
        return self.models.to_pandas()


class ServerStatus(dict):
    """The server's status (the dict `status()` returns): version, device, memory and the pool
    in brief; renders as a table like `pool()`."""

    def rows(self) -> list[tuple[str, str]]:
        device = self.get("device") or {}
        memory = self.get("memory") or {}
        pool = self.get("pool") or {}
        user = self.get("user") or {}
        rows = [("version", str(self.get("version", "")))]
        if device:
            where = {"gpu": "GPU (Metal)", "cpu": "CPU"}.get(str(device.get("type")), str(device.get("type") or ""))
            rows.append(("device", " · ".join(str(part) for part in (where, device.get("name")) if part)))
        if isinstance(memory.get("total_bytes"), (int, float)):
            available = memory.get("available_bytes")
            free = f"{format_bytes(available)} available of " if isinstance(available, (int, float)) else ""
            rows.append(("memory", free + format_bytes(memory["total_bytes"])))
        if isinstance(memory.get("budget_bytes"), (int, float)):
            rows.append(("model memory budget", format_bytes(memory["budget_bytes"])))
        if pool:
            most = pool.get("max_loaded_models")
            rows.append(("loaded models", f"{pool.get('loaded_models', 0)}" + (f" of at most {most}" if most else "")))
            if isinstance(pool.get("memory_used_bytes"), (int, float)):
                rows.append(("memory used by models", format_bytes(pool["memory_used_bytes"])))
        if user.get("username"):
            rows.append(("signed in as", user["username"] + (" (admin)" if user.get("is_admin") else "")))
        return rows

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align: left'>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
            for name, value in self.rows()
        )
        return f"<p><strong>jupyter-mlx-manager</strong></p><table><tbody>{body}</tbody></table>"
