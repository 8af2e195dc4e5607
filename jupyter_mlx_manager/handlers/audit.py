"""`mlx/api/audit…`: query, summarise and export the audit trail, and follow it live.

Users see their own records; administrators see everyone's.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from ..audit.log import FIELDS, GROUP_BY, STATUSES, TEXT_BOUNDS
from ..auth import InvalidToken
from ..errors import BadRequest, Forbidden
from .base import MLXAPIHandler, MLXWebSocketHandler, authorized, web, ws_authenticated


def int_argument(handler, name: str, default: int, low: int, high: int) -> int:
    raw = handler.get_query_argument(name, str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}", reason=f"invalid_{name}")
    return int(raw)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_safe(record: dict) -> dict:
    """A spreadsheet runs a cell that starts like a formula: such text cells get a leading `'`
    (OWASP's advice), so a model id like `=HYPERLINK(…)` opens as text."""
    return {k: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_STARTS) else v for k, v in record.items()}


class _AuditQueryHandler(MLXAPIHandler):
    def filters(self) -> dict[str, str | None]:
        """The query's filters, narrowed to the caller's own records unless they are an admin."""
        names = ("user", "model", "status", "notebook", "since", "until")
        args = {name: self.get_query_argument(name, None) for name in names}
        if args["notebook"] is not None and len(args["notebook"]) > TEXT_BOUNDS["notebook"]:
            raise BadRequest(
                f"notebook must be a path of at most {TEXT_BOUNDS['notebook']} characters", reason="invalid_notebook"
            )
        if args["status"] is not None and args["status"] not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}", reason="invalid_status")
        for name in ("since", "until"):
            if args[name] is not None and not (10 <= len(args[name]) <= 40 and args[name][:4].isdigit()):
                raise BadRequest(
                    f"{name} must be an ISO 8601 time such as 2026-11-28T10:00:00Z", reason=f"invalid_{name}"
                )
        if not self.mlx_user["is_admin"]:
            if args["user"] not in (None, self.mlx_user["username"]):
                raise web.HTTPError(403, "only administrators can see other users' records", reason="admin_required")
            args["user"] = self.mlx_user["username"]
        return args


class AuditHandler(_AuditQueryHandler):
    @web.authenticated
    @authorized
    async def get(self):
        records, total = await self.services.audit.query(
            limit=int_argument(self, "limit", 100, 1, 1000),
            offset=int_argument(self, "offset", 0, 0, 10**9),
            **self.filters(),
        )
        self.write_json({"records": records, "total": total})


class AuditStatsHandler(_AuditQueryHandler):
    """Totals by status, model and user; with `?group_by=notebook|user|model`, the inference
    requests, tokens and time of each notebook, user or model: `{"groups": [{"key", …}]}`."""

    @web.authenticated
    @authorized
    async def get(self):
        group_by = self.get_query_argument("group_by", None)
        if group_by is None:
            self.write_json(await self.services.audit.stats(**self.filters()))
            return
        if group_by not in GROUP_BY:
            raise BadRequest(f"group_by must be one of {', '.join(GROUP_BY)}", reason="invalid_group_by")
        limit = int_argument(self, "limit", 100, 1, 1000)
        self.write_json({"groups": await self.services.audit.grouped_stats(group_by, limit=limit, **self.filters())})


USAGE_GROUP_BY = ("day", "user", "model", "notebook")


class UsageHandler(_AuditQueryHandler):
    """`mlx/api/usage`: requests and tokens per day, user, model or notebook (own records;
    admins everyone's), from the same audit records the budgets count."""

    @web.authenticated
    @authorized
    async def get(self):
        group_by = self.get_query_argument("group_by", "day")
        if group_by not in USAGE_GROUP_BY:
            raise BadRequest(f"group_by must be one of {', '.join(USAGE_GROUP_BY)}", reason="invalid_group_by")
        limit = int_argument(self, "limit", 1000, 1, 10000)
        rows = await self.services.audit.grouped_stats(group_by, limit=limit, **self.filters())
        self.write_json({"group_by": group_by, "rows": rows})


class AuditExportHandler(_AuditQueryHandler):
    """Streams every matching record, oldest first; `?token=` lets a browser link download it."""

    query_token_allowed = True

    @web.authenticated
    @authorized
    async def get(self):
        export_format = self.get_query_argument("format", "jsonl")
        if export_format not in ("jsonl", "csv"):
            raise BadRequest("format must be jsonl or csv", reason="invalid_format")
        filters = self.filters()
        self.set_header("Content-Type", "application/x-ndjson" if export_format == "jsonl" else "text/csv")
        self.set_header("Content-Disposition", f'attachment; filename="mlx-audit.{export_format}"')
        if export_format == "csv":
            self.write(",".join(FIELDS) + "\r\n")
        try:
            await self.flush()  # the headers go now (APIHandler.finish would make an empty export JSON)
            async for batch in self.services.audit.export_batches(**filters):
                if export_format == "jsonl":
                    self.write("".join(json.dumps(record) + "\n" for record in batch))
                else:
                    buffer = io.StringIO()
                    csv.DictWriter(buffer, FIELDS).writerows([_csv_safe(record) for record in batch])
                    self.write(buffer.getvalue())
                await self.flush()
        except StreamClosedError:
            return
        self.finish()


class AuditWebSocketHandler(MLXWebSocketHandler):
    """Live records: `?replay=N` sends the last N first; pings every `ping_seconds`.

    The user's status is re-checked at every ping and whenever an admin changes a user,
    so a disabled user's socket is closed with 1008.
    """

    ping_seconds = 10.0

    @ws_authenticated
    async def get(self, *args, **kwargs):
        self._replay = int_argument(self, "replay", 0, 0, 1000)
        return await super().get(*args, **kwargs)

    async def open(self, *args, **kwargs):
        if self.reject_if_refused():
            return
        user = self.mlx_user
        self.subscription = self.services.audit.subscribe(
            lambda record: user["is_admin"] or record["user"] == user["username"]
        )
        self.services.in_flight.track_socket(self)
        self._pump = asyncio.ensure_future(self._send_records())

    async def _send_records(self):
        try:
            if self._replay:
                records, _ = await self.services.audit.query(
                    user=None if self.mlx_user["is_admin"] else self.mlx_user["username"], limit=self._replay
                )
                for record in reversed(records):
                    await self.write_message(json.dumps({"type": "record", "data": record}))
            while True:
                message = await self.subscription.next(timeout=self.ping_seconds)
                if message is None:
                    if not await self.still_allowed():
                        return
                    message = {"type": "ping"}
                await self.write_message(json.dumps(message))
        except WebSocketClosedError:
            pass

    async def still_allowed(self) -> bool:
        """Re-read the user and their API token; close with 1008 if the user was disabled,
        set pending, deleted or lost admin rights (the feed was chosen for them), or if the
        API token that opened the socket was revoked."""
        try:
            user = self.services.users.require_active(await self.services.users.get(self.mlx_user["id"]))
            if user["is_admin"] != self.mlx_user["is_admin"]:
                raise Forbidden("your rights changed: reconnect", reason="rights_changed")
            if self.credential is not None and self.credential[1].kind == "api":
                await self.services.users.user_for_token(self.credential[0])
        except (web.HTTPError, InvalidToken) as exc:
            self.close(1008, (getattr(exc, "message", None) or "token revoked")[:120])
            return False
        return True

    def on_message(self, message):
        """Clients have nothing to say on this socket."""

    def on_close(self):
        subscription = getattr(self, "subscription", None)
        if subscription is not None:
            self.services.audit.unsubscribe(subscription)
            self.services.in_flight.untrack_socket(self)
            self._pump.cancel()
