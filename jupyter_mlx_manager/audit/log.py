"""Audit records: committed to SQLite before `record()` returns, then fanned out live.

Live subscribers (the WebSocket) each get a bounded queue: a subscriber that reads too
slowly loses records and is told how many with a gap marker, so the server's memory stays
bounded whatever the client does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ..storage import Database, utcnow

EVENT_SCHEMA_ID = "https://events.jupyter.org/jupyter_mlx_manager/audit/v1"

FIELDS = (
    "id", "request_id", "time", "user", "client", "action", "endpoint", "model", "status",
    "prompt_tokens", "cached_tokens", "completion_tokens", "ttft_ms", "duration_ms", "error_type",
    "backend", "audio_seconds", "requested_model", "notebook", "kernel_id", "cell_id",
)  # fmt: skip
STATUSES = ("ok", "error", "cancelled", "timeout")
# Text fields come from clients (a model id, a user name that failed to log in, an error
# message): bounded so that no request can grow the log, a live socket or an export at will.
TEXT_BOUNDS = {
    "request_id": 64,
    "user": 64,
    "client": 32,
    "action": 64,
    "endpoint": 256,
    "model": 256,
    "error_type": 100,
    "backend": 64,  # `local`, or the remote backend that served an inference request
    "requested_model": 256,  # the profile or alias asked for, when one chose the model
    # Where a kernel's request came from (audit/attribution.py validates these already).
    "notebook": 1024,
    "kernel_id": 64,
    "cell_id": 64,
}
# Token sums leave audio out: a speech request's prompt "tokens" are characters and its output
# samples, a transcription's prompt is samples (its output is text tokens); audio counts in seconds.
PROMPT_TOKENS_SQL = "CASE WHEN audio_seconds IS NULL THEN COALESCE(prompt_tokens, 0) ELSE 0 END"
COMPLETION_TOKENS_SQL = (
    "CASE WHEN audio_seconds IS NULL OR action = 'transcriptions' THEN COALESCE(completion_tokens, 0) ELSE 0 END"
)


def tokens_of(record: dict[str, Any]) -> int:
    """Prompt + completion tokens of a record, as the SQL sums above count them."""
    audio = record.get("audio_seconds") is not None
    prompt = 0 if audio else record.get("prompt_tokens") or 0
    completion = record.get("completion_tokens") or 0 if not audio or record.get("action") == "transcriptions" else 0
    return prompt + completion


# `stats(group_by=…)`: the columns a summary can be grouped by.
GROUP_BY = ("notebook", "user", "model")
MAX_DETAIL = 1000


class Subscription:
    """A bounded queue of live records for one subscriber."""

    def __init__(self, maxsize: int, accepts: Callable[[dict[str, Any]], bool]):
        self.maxsize = maxsize
        self.accepts = accepts
        self._items: deque[dict[str, Any]] = deque()
        self._pending_gap = 0
        self._ready = asyncio.Event()

    def offer(self, record: dict[str, Any]) -> None:
        if not self.accepts(record):
            return
        if len(self._items) >= self.maxsize:
            self._pending_gap += 1
        else:
            if self._pending_gap:
                self._items.append({"type": "gap", "dropped": self._pending_gap})
                self._pending_gap = 0
            self._items.append({"type": "record", "data": record})
        self._ready.set()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when nothing arrived within `timeout` seconds."""
        if not self._items and not self._pending_gap:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        if self._items:
            return self._items.popleft()
        dropped, self._pending_gap = self._pending_gap, 0
        return {"type": "gap", "dropped": dropped}


class AuditLog:
    def __init__(self, db: Database, emit: Callable[[dict[str, Any]], None] | None = None):
        self.db = db
        self._emit = emit
        # Called with each committed record (metrics); must be cheap and must not raise.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._subscribers: set[Subscription] = set()

    async def record(self, action: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
        """Commit one record and publish it; returns the record as stored.

        `detail` (an error message, a note) is cut to MAX_DETAIL characters; `content` (the
        prompt and completion, when the server records them) is stored whole instead."""
        assert status in STATUSES, status
        record = {name: fields.get(name) for name in FIELDS}
        record.update(action=action, status=status, time=utcnow())
        record["request_id"] = record["request_id"] or uuid.uuid4().hex
        for name, bound in TEXT_BOUNDS.items():
            if record[name] is not None:
                record[name] = _bounded(str(record[name]), bound)
        detail = fields.get("content")
        if detail is None and fields.get("detail") is not None:
            detail = _bounded(str(fields["detail"]), MAX_DETAIL)
        record["id"] = await self.db.write(_insert, record, detail)
        for subscriber in list(self._subscribers):
            subscriber.offer(record)
        if self._emit is not None:
            self._emit(record)
        for listener in self.listeners:
            listener(record)
        return record

    def subscribe(self, accepts: Callable[[dict[str, Any]], bool], maxsize: int = 256) -> Subscription:
        subscription = Subscription(maxsize, accepts)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    async def query(self, limit: int = 100, offset: int = 0, **filters: str | None) -> tuple[list[dict[str, Any]], int]:
        """Records newest first matching every filter (user, model, status, notebook, since, until), and
        how many match in total."""
        where, params = _where(**filters)

        def run(conn):
            total = conn.execute(f"SELECT COUNT(*) FROM audit_log {where}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT {', '.join(FIELDS)} FROM audit_log {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return [dict(row) for row in rows], total

        return await self.db.read(run)

    async def stats(self, **filters: str | None) -> dict[str, Any]:
        """Counts by status, model and user; token sums; latency percentiles (ms)."""
        where, params = _where(**filters)

        def run(conn):
            def counts(column):
                rows = conn.execute(
                    f"SELECT {column}, COUNT(*) FROM audit_log {where} GROUP BY {column} ORDER BY 2 DESC", params
                )
                return {str(key): n for key, n in rows}

            def percentiles(column):
                cond = f"{where} {'AND' if where else 'WHERE'} {column} IS NOT NULL"
                n = conn.execute(f"SELECT COUNT(*) FROM audit_log {cond}", params).fetchone()[0]
                out = {}
                for name, q in (("p50", 0.5), ("p95", 0.95)):
                    row = conn.execute(
                        f"SELECT {column} FROM audit_log {cond} ORDER BY {column} LIMIT 1 OFFSET ?",
                        [*params, int(q * (n - 1) + 0.5)],
                    ).fetchone()
                    out[name] = row[0] if n else None
                return out

            total, prompt, completion, cached = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
                f"COALESCE(SUM(cached_tokens), 0) FROM audit_log {where}",
                params,
            ).fetchone()
            return {
                "total": total,
                "by_status": counts("status"),
                "by_model": counts("model"),
                "by_user": counts("user"),
                "tokens": {"prompt": prompt, "completion": completion, "cached": cached},
                "ttft_ms": percentiles("ttft_ms"),
                "duration_ms": percentiles("duration_ms"),
            }

        return await self.db.read(run)

    async def grouped_stats(self, group_by: str, limit: int = 100, **filters: str | None) -> list[dict[str, Any]]:
        """Inference requests (records with an endpoint) per `group_by` value (notebook, user,
        model, or the UTC day), most requests first (days in order): requests, token sums and
        total duration (ms). The `None` key gathers the requests without one (e.g. not from a
        notebook). `mlx/api/usage` and the budgets count from these same records."""
        if group_by not in (*GROUP_BY, "day"):
            raise ValueError(f"group_by must be one of {(*GROUP_BY, 'day')}")
        column = "substr(time, 1, 10)" if group_by == "day" else group_by
        order = "1" if group_by == "day" else "2 DESC, 1"
        where, params = _where(**filters)
        cond = f"{where} {'AND' if where else 'WHERE'} endpoint IS NOT NULL"

        def run(conn):
            rows = conn.execute(
                f"SELECT {column}, COUNT(*), SUM({PROMPT_TOKENS_SQL}), SUM({COMPLETION_TOKENS_SQL}), "
                f"COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(duration_ms), 0), COALESCE(SUM(audio_seconds), 0) "
                f"FROM audit_log {cond} "
                f"GROUP BY {column} ORDER BY {order} LIMIT ?",
                [*params, limit],
            )
            return [
                {
                    "key": key,
                    "requests": n,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "cached_tokens": cached,
                    "duration_ms": round(duration, 1),
                    "audio_seconds": round(audio, 3),
                }
                for key, n, prompt, completion, cached, duration, audio in rows
            ]

        return await self.db.read(run)

    async def export_batches(self, batch: int = 500, **filters: str | None):
        """Matching records oldest first, in batches, for streaming exports of any size."""
        where, params = _where(**filters)
        last_id = 0
        while True:
            cond = f"{where} {'AND' if where else 'WHERE'} id > ?"
            rows = await self.db.read(
                lambda conn: [
                    dict(r)
                    for r in conn.execute(
                        f"SELECT {', '.join(FIELDS)} FROM audit_log {cond} ORDER BY id LIMIT ?",
                        [*params, last_id, batch],
                    )
                ]
            )
            if not rows:
                return
            yield rows
            last_id = rows[-1]["id"]

    async def prune(self, retention_days: int) -> int:
        """Delete records older than `retention_days` (0 keeps everything); returns how many."""
        if retention_days <= 0:
            return 0
        cutoff = (dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        return await self.db.write(
            lambda conn: conn.execute("DELETE FROM audit_log WHERE time < ?", (cutoff,)).rowcount
        )


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(
    user: str | None = None,
    model: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
    notebook: str | None = None,
) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in (("user", user), ("model", model), ("status", status), ("notebook", notebook)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("time >= ?")
        params.append(since)
    if until is not None:
        clauses.append("time < ?")
        params.append(until)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _insert(conn, record: dict[str, Any], detail: str | None) -> int:
    columns = [name for name in FIELDS if name != "id"]
    cursor = conn.execute(
        f"INSERT INTO audit_log ({', '.join(columns)}, detail) VALUES ({', '.join('?' * (len(columns) + 1))})",
        [record[name] for name in columns] + [detail],
    )
    return cursor.lastrowid
