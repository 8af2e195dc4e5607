"""Token budgets per user, per group and by default, checked when the pipeline admits a request.

A budget is up to three limits, `tokens_per_minute`, `tokens_per_day` and `tokens_per_month`
(prompt + completion tokens; 0 or absent = unlimited), over calendar windows in UTC. The
limits that apply to a user are, window by window, their own if set, else the most generous
of their groups' (a JupyterHub user's groups), else the default. They come from
`c.MLXManager.budgets` (`{"default": {…}, "users": {name: {…}}, "groups": {name: {…}}}`),
overlaid by what admins set through `PUT mlx/api/budgets` (kept in SQLite).

What a user has spent is counted from the audit log itself (the same numbers as `mlx/api/usage`;
audio counts in seconds, not as tokens): summed once per window from the database, then kept current from each record
the audit commits. A request is refused (429 `budget_exceeded`, `Retry-After` the seconds to
the window's end) once a window's limit is spent; one that is admitted finishes, even if it
crosses the limit (a stream is never cut by its budget).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from typing import Any

from .audit.log import COMPLETION_TOKENS_SQL, PROMPT_TOKENS_SQL, tokens_of
from .errors import BadRequest, TooManyRequests
from .storage import Database, utcnow

WINDOWS = ("tokens_per_minute", "tokens_per_day", "tokens_per_month")
SCOPES = {"users": "user", "groups": "group"}  # the config's keys → the table's scopes
MAX_NAME = 64


class BudgetExceeded(TooManyRequests):
    reason = "budget_exceeded"


def check_limits(value: Any, where: str) -> dict[str, int]:
    """A budget as given (config or API): only the three windows, each a whole number ≥ 0."""
    if not isinstance(value, dict) or not set(value) <= set(WINDOWS):
        raise BadRequest(f"{where} must be an object with keys from {', '.join(WINDOWS)}", reason="invalid_budget")
    out = {}
    for window, limit in value.items():
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise BadRequest(f"{where}.{window} must be a whole number ≥ 0 (0 = unlimited)", reason="invalid_budget")
        out[window] = limit
    return out


def check_budgets(value: Any) -> dict[str, Any]:
    """`{"default": {…}, "users": {name: {…} | null}, "groups": {name: {…} | null}}`, checked
    (`null` removes an entry, through the API)."""
    if not isinstance(value, dict) or not set(value) <= {"default", *SCOPES}:
        raise BadRequest("budgets must be an object with keys default, users and groups", reason="invalid_budget")
    out: dict[str, Any] = {}
    if "default" in value:
        out["default"] = None if value["default"] is None else check_limits(value["default"], "default")
    for key in SCOPES:
        entries = value.get(key)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise BadRequest(f"{key} must be an object of name → budget", reason="invalid_budget")
        for name, limits in entries.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                raise BadRequest(f"{key}: names are 1 to {MAX_NAME} characters", reason="invalid_budget")
            out.setdefault(key, {})[name] = None if limits is None else check_limits(limits, f"{key}.{name}")
    return out


def window_of(window: str, now: float) -> tuple[dt.datetime, dt.datetime]:
    """The calendar window (UTC) holding `now`: [start, end)."""
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    if window == "tokens_per_minute":
        start = at.replace(second=0, microsecond=0)
        return start, start + dt.timedelta(minutes=1)
    if window == "tokens_per_day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + dt.timedelta(days=32)).replace(day=1)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Budgets:
    def __init__(self, db: Database, configured: dict[str, Any], clock: Callable[[], float] = time.time):
        self.db = db
        self.configured = configured
        self.clock = clock  # tests move time forward through this, never by sleeping
        self._stored: dict[str, Any] = {}
        # (user, window, start) → [tokens, last audit id counted]; only current windows are kept.
        self._spent: dict[tuple[str, str, str], list[int]] = {}
        self._loading: dict[tuple[str, str, str], asyncio.Future] = {}
        self._groups: dict[str, tuple[str, ...]] = {}  # username → groups last seen

    def load(self) -> None:
        """The admins' budgets from the database, once at start (before any request)."""
        rows = self.db.write_sync(lambda conn: conn.execute("SELECT scope, name, limits FROM budgets").fetchall())
        for scope, name, limits in rows:
            if scope == "default":
                self._stored["default"] = json.loads(limits)
            else:
                self._stored.setdefault(f"{scope}s", {})[name] = json.loads(limits)

    # -- what applies ----------------------------------------------------------------------
    def table(self) -> dict[str, Any]:
        """The budgets in force: the configured ones overlaid by the stored ones."""
        out = {
            "default": dict(self._stored.get("default", self.configured.get("default") or {})),
            "users": {**(self.configured.get("users") or {}), **self._stored.get("users", {})},
            "groups": {**(self.configured.get("groups") or {}), **self._stored.get("groups", {})},
        }
        return out

    def limits_for(self, username: str, groups: tuple[str, ...] = ()) -> dict[str, int]:
        """Window → limit (> 0) for this user: their own, else their groups' most generous,
        else the default."""
        table = self.table()
        own = table["users"].get(username) or {}
        group_limits = [table["groups"][g] for g in groups if g in table["groups"]]
        out = {}
        for window in WINDOWS:
            if window in own:
                limit = own[window]
            elif any(window in g for g in group_limits):
                values = [g.get(window, 0) for g in group_limits if window in g]
                limit = 0 if 0 in values else max(values)  # an unlimited group is the most generous
            else:
                limit = table["default"].get(window, 0)
            if limit:
                out[window] = limit
        return out

    async def groups_of(self, username: str, seen: tuple[str, ...] | None) -> tuple[str, ...]:
        """The user's groups: those this request came with (remembered when they change), else
        the ones last seen (a request with one of our own tokens carries none)."""
        if seen is not None:
            if self._groups.get(username) != seen:
                self._groups[username] = seen
                await self.db.write(
                    lambda conn: conn.execute(
                        "INSERT INTO user_groups (username, groups, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (username) DO UPDATE SET groups = excluded.groups, updated_at = excluded.updated_at",
                        (username, json.dumps(list(seen)), utcnow()),
                    )
                )
            return seen
        if username not in self._groups:
            row = await self.db.read(
                lambda conn: conn.execute("SELECT groups FROM user_groups WHERE username = ?", (username,)).fetchone()
            )
            self._groups[username] = tuple(json.loads(row[0])) if row else ()
        return self._groups[username]

    # -- admission -------------------------------------------------------------------------
    async def check(self, username: str, groups: tuple[str, ...] | None = None) -> None:
        """Raise BudgetExceeded when a window's budget of this user is spent."""
        groups = await self.groups_of(username, groups)  # remembered even while no budget is set
        if not (self.configured or self._stored):
            return
        limits = self.limits_for(username, groups)
        if not limits:
            return
        now = self.clock()
        for window, limit in limits.items():
            spent = await self.spent(username, window, now)
            if spent >= limit:
                end = window_of(window, now)[1].timestamp()
                retry = max(1, math.ceil(end - now))
                raise BudgetExceeded(
                    f"{username} has used {spent} of {limit} {window.replace('_', ' ')}; "
                    f"the budget renews in {retry} s",
                    headers={"Retry-After": str(retry)},
                )

    async def spent(self, username: str, window: str, now: float | None = None) -> int:
        """Prompt + completion tokens of this user's inference requests in the window holding
        `now` (the clock's now by default)."""
        start, end = window_of(window, self.clock() if now is None else now)
        key = (username, window, _iso(start))
        if key not in self._spent:
            loading = self._loading.get(key)
            if loading is None:
                loading = self._loading[key] = asyncio.ensure_future(self._sum(username, start, end))
                loading.add_done_callback(lambda _: self._loading.pop(key, None))
            tokens, last_id = await asyncio.shield(loading)
            if key not in self._spent:
                self._forget_old(window, key[2])
                self._spent[key] = [tokens, last_id]
        return self._spent[key][0]

    async def _sum(self, username: str, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
        def run(conn):
            last_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit_log").fetchone()[0]
            tokens = conn.execute(
                f"SELECT COALESCE(SUM({PROMPT_TOKENS_SQL} + {COMPLETION_TOKENS_SQL}), 0) "
                "FROM audit_log WHERE user = ? AND time >= ? AND time < ? AND endpoint IS NOT NULL AND id <= ?",
                (username, _iso(start), _iso(end), last_id),
            ).fetchone()[0]
            return int(tokens), int(last_id)

        return await self.db.read(run)

    def _forget_old(self, window: str, current_start: str) -> None:
        for key in [k for k in self._spent if k[1] == window and k[2] != current_start]:
            del self._spent[key]

    def on_record(self, record: dict[str, Any]) -> None:
        """An audit listener: a committed inference record counts in its user's current windows."""
        if not record.get("endpoint") or not record.get("user"):
            return
        tokens = tokens_of(record)
        if not tokens:
            return
        now = self.clock()
        for (user, window, start), entry in self._spent.items():
            if user == record["user"] and start == _iso(window_of(window, now)[0]) and record["id"] > entry[1]:
                entry[0] += tokens
                entry[1] = record["id"]

    # -- what users and admins see -----------------------------------------------------------
    async def status(self, username: str, groups: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A user's limits, what is spent and left in each window, and when each renews."""
        groups = await self.groups_of(username, groups)
        limits = self.limits_for(username, groups)
        now = self.clock()
        windows = {}
        for window in WINDOWS:
            spent = await self.spent(username, window, now)
            limit = limits.get(window)
            windows[window] = {
                "limit": limit,
                "used": spent,
                "remaining": None if limit is None else max(0, limit - spent),
                "resets_at": _iso(window_of(window, now)[1]),
            }
        return {"user": username, "groups": list(groups), "windows": windows}

    async def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Store an admin's changes (checked with `check_budgets`); `null` removes an entry."""

        def run(conn):
            if "default" in changes:
                conn.execute("DELETE FROM budgets WHERE scope = 'default'")
                if changes["default"] is not None:
                    conn.execute(
                        "INSERT INTO budgets (scope, name, limits, updated_at) VALUES ('default', '', ?, ?)",
                        (json.dumps(changes["default"]), utcnow()),
                    )
            for key, scope in SCOPES.items():
                for name, limits in (changes.get(key) or {}).items():
                    conn.execute("DELETE FROM budgets WHERE scope = ? AND name = ?", (scope, name))
                    if limits is not None:
                        conn.execute(
                            "INSERT INTO budgets (scope, name, limits, updated_at) VALUES (?, ?, ?, ?)",
                            (scope, name, json.dumps(limits), utcnow()),
                        )

        await self.db.write(run)
        if "default" in changes:
            self._stored.pop("default", None)
            if changes["default"] is not None:
                self._stored["default"] = changes["default"]
        for key in SCOPES:
            for name, limits in (changes.get(key) or {}).items():
                entries = self._stored.setdefault(key, {})
                entries.pop(name, None)
                if limits is not None:
                    entries[name] = limits
        return self.table()
