"""Stored OpenAI Responses, per user, for `c.MLXManager.responses_ttl_hours` (SQLite).

Each row keeps the response object (for `GET mlx/v1/responses/{id}`) and the conversation up
to and including it (`history`: input and output items), so `previous_response_id` continues
it with one read. Another user's id is simply not found. Expired rows are pruned on every
write and hourly.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ..storage import Database


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ResponseStore:
    def __init__(self, db: Database, ttl_hours: float = 24):
        self.db = db
        self.ttl_hours = ttl_hours

    @property
    def enabled(self) -> bool:
        return self.ttl_hours > 0

    async def save(self, user: str, body: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        now = dt.datetime.now(dt.UTC)
        expires = now + dt.timedelta(hours=self.ttl_hours)

        def write(conn):
            conn.execute("DELETE FROM responses WHERE expires_at < ?", (_iso(now),))
            conn.execute(
                "INSERT OR REPLACE INTO responses (id, user, created_at, expires_at, body, history) VALUES (?, ?, ?, ?, ?, ?)",
                (body["id"], user, _iso(now), _iso(expires), json.dumps(body), json.dumps(history)),
            )

        await self.db.write(write)

    async def get(self, user: str, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        now = _iso(dt.datetime.now(dt.UTC))
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT body, history FROM responses WHERE id = ? AND user = ? AND expires_at >= ?",
                (response_id, user, now),
            ).fetchone()
        )
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    async def delete(self, user: str, response_id: str) -> bool:
        return bool(
            await self.db.write(
                lambda conn: (
                    conn.execute("DELETE FROM responses WHERE id = ? AND user = ?", (response_id, user)).rowcount
                )
            )
        )

    async def prune(self) -> int:
        now = _iso(dt.datetime.now(dt.UTC))
        return await self.db.write(
            lambda conn: conn.execute("DELETE FROM responses WHERE expires_at < ?", (now,)).rowcount
        )
