"""OpenAI's Batch API: batches of requests from an uploaded file, run in the background at low
priority, each answered once in an output (or error) file.

A batch is a row in SQLite plus a task on the server's event loop. Its lines go through the
same serving pipeline as interactive requests (`run_line`), as its owner, with
`priority="batch"`: an interactive request is admitted before any waiting batch line, and batch
lines hold at most `batch_slots` decoding slots of a model (`RequestLimits`). A line whose
owner's token budget is spent waits for the budget to renew (the batch stays `in_progress`).

Progress is the output and error files themselves: a line's answer is appended as soon as it
is known, so after a restart the batch resumes with the lines that have no answer yet — every
`custom_id` is answered exactly once. `completion_window` (24 h) bounds a batch: lines still
unanswered then are answered `batch_expired` in the error file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..auth import Actor
from ..budgets import BudgetExceeded
from ..errors import BadRequest, NotFound
from ..inference.request import InvalidParam
from ..storage import Database
from .files import BATCH_URLS, FileStore, new_id

WINDOW_SECONDS = 24 * 3600
LIVE = ("validating", "in_progress", "finalizing")
BUDGET_RECHECK_SECONDS = 2.0
BATCH_COLUMNS = (
    "id, user, endpoint, input_file_id, completion_window, status, output_file_id, error_file_id, total, "
    "completed, failed, metadata, errors, created_at, in_progress_at, finalizing_at, completed_at, failed_at, "
    "cancelling_at, cancelled_at, expires_at"
)

# (actor, url, body, request_id) → (HTTP status, reply body), as the route would answer.
LineRunner = Callable[[Actor, str, dict[str, Any], str], Awaitable[tuple[int, dict[str, Any]]]]


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    """A batch as OpenAI describes it."""
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": json.loads(row["errors"]) if row["errors"] else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        "in_progress_at": row["in_progress_at"],
        "expires_at": row["expires_at"],
        "finalizing_at": row["finalizing_at"],
        "completed_at": row["completed_at"],
        "failed_at": row["failed_at"],
        "expired_at": row["completed_at"] if row["status"] == "expired" else None,
        "cancelling_at": row["cancelling_at"],
        "cancelled_at": row["cancelled_at"],
        "request_counts": {"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
    }


class BatchService:
    def __init__(
        self,
        db: Database,
        files: FileStore,
        account: Callable[[str], Awaitable[dict[str, Any] | None]],
        run_line: LineRunner,
        slots: int,
        log: Any,
        clock: Callable[[], float] = time.time,
    ):
        self.db = db
        self.files = files
        self.account = account  # the owner's account as it is now (a disabled owner's batch fails)
        self.run_line = run_line
        self.slots = max(1, slots)  # lines of one batch in flight at once
        self.log = log
        self.clock = clock
        self._tasks: dict[str, asyncio.Task] = {}

    # -- the API -----------------------------------------------------------------------------
    async def create(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = body.get("endpoint")
        if endpoint not in BATCH_URLS:
            raise InvalidParam(f"endpoint must be one of {', '.join(BATCH_URLS)}", "endpoint", "invalid_value")
        if body.get("completion_window", "24h") != "24h":
            raise InvalidParam("completion_window must be '24h'", "completion_window", "invalid_value")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                       for k, v in metadata.items())
        ):  # fmt: skip
            raise InvalidParam("metadata must be at most 16 string pairs", "metadata", "invalid_value")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidParam("input_file_id is required", "input_file_id", "invalid_value")
        try:
            source = await self.files.get(user, file_id)
        except NotFound:
            raise InvalidParam(f"no file {file_id!r}", "input_file_id", "not_found") from None
        if source["purpose"] != "batch":
            raise InvalidParam("the input file must be uploaded with purpose 'batch'", "input_file_id")
        first = await asyncio.get_running_loop().run_in_executor(None, _first_url, self.files.path(file_id))
        if first != endpoint:
            raise InvalidParam(f"the file's requests are for {first}, not {endpoint}", "endpoint", "mismatched_url")
        output = await self.files.create_empty(user, f"{file_id}_output.jsonl")
        errors = await self.files.create_empty(user, f"{file_id}_error.jsonl")
        now = int(self.clock())
        row = {
            "id": new_id("batch_"),
            "user": user,
            "endpoint": endpoint,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": output["id"],
            "error_file_id": errors["id"],
            "total": source["lines"],
            "completed": 0,
            "failed": 0,
            "metadata": json.dumps(metadata) if metadata else None,
            "errors": None,
            "created_at": now,
            "in_progress_at": None,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "expires_at": now + WINDOW_SECONDS,
        }
        columns = BATCH_COLUMNS.split(", ")
        await self.db.write(
            lambda conn: conn.execute(
                f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
        )
        self._schedule(row["id"])
        return batch_object(row)

    async def get(self, user: str, batch_id: str) -> dict[str, Any]:
        return batch_object(await self._row(batch_id, user))

    async def list(self, user: str, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        def run(conn):
            clause, params = "", [user]
            if after:
                anchor = conn.execute(
                    "SELECT created_at FROM batches WHERE id = ? AND user = ?", (after, user)
                ).fetchone()
                if anchor is not None:
                    clause, params = "AND (created_at, id) < (?, ?)", [user, anchor[0], after]
            return conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE user = ? {clause} ORDER BY created_at DESC, id DESC "
                "LIMIT ?",
                [*params, limit + 1],
            ).fetchall()

        rows = [batch_object(dict(r)) for r in await self.db.read(run)]
        page = rows[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(rows) > limit,
        }

    async def cancel(self, user: str, batch_id: str) -> dict[str, Any]:
        row = await self._row(batch_id, user)
        if row["status"] not in LIVE:
            raise BadRequest(f"a batch that is {row['status']} cannot be cancelled", reason="invalid_state")
        await self._set(batch_id, status="cancelling", cancelling_at=int(self.clock()))
        task = self._tasks.get(batch_id)
        if task is None or task.done():
            await self._set(batch_id, status="cancelled", cancelled_at=int(self.clock()))
        else:
            task.cancel()  # the task answers for itself: cancelled, with what finished kept
        return await self.get(user, batch_id)

    # -- running -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume every batch a stopped server left running; finish the cancellations."""
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT id, status FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', "
                "'cancelling') ORDER BY created_at"
            ).fetchall()
        )
        for batch_id, status in rows:
            if status == "cancelling":
                await self._set(batch_id, status="cancelled", cancelled_at=int(self.clock()))
            else:
                self._schedule(batch_id)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _schedule(self, batch_id: str) -> None:
        task = asyncio.ensure_future(self._run(batch_id))
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    async def _run(self, batch_id: str) -> None:
        row = await self._row(batch_id)
        loop = asyncio.get_running_loop()
        output = _Answers(self.files.path(row["output_file_id"]))
        errors = _Answers(self.files.path(row["error_file_id"]))
        try:
            lines = await loop.run_in_executor(None, _read_lines, self.files.path(row["input_file_id"]))
            answered = await loop.run_in_executor(None, lambda: output.recover() | errors.recover())
            if row["status"] == "validating":
                await self._set(batch_id, status="in_progress", in_progress_at=int(self.clock()))
            pending = iter([line for line in lines if line["custom_id"] not in answered])

            async def work() -> None:
                for line in pending:
                    await self._answer(row, line, output, errors)

            await asyncio.gather(*(work() for _ in range(self.slots)))
            await self._set(batch_id, status="finalizing", finalizing_at=int(self.clock()))
            await self._count(row, output, errors)
            expired = self.clock() >= row["expires_at"]
            await self._set(batch_id, status="expired" if expired else "completed", completed_at=int(self.clock()))
        except asyncio.CancelledError:
            current = await self._row(batch_id)
            if current["status"] == "cancelling":
                await self._count(row, output, errors)
                await self._set(batch_id, status="cancelled", cancelled_at=int(self.clock()))
            raise  # else the server is stopping: the batch resumes at the next start
        except Exception as exc:
            self.log.exception("batch %s failed", batch_id)
            await self._count(row, output, errors)
            await self._set(
                batch_id,
                status="failed",
                failed_at=int(self.clock()),
                errors=json.dumps({"object": "list", "data": [{"code": "batch_failed", "message": str(exc)[:500]}]}),
            )
        finally:
            output.close()
            errors.close()

    async def _answer(self, row: dict[str, Any], line: dict[str, Any], output: _Answers, errors: _Answers) -> None:
        request_id = new_id("")
        if self.clock() >= row["expires_at"]:
            status, body = 408, _error_body("the batch's completion window ended first", "batch_expired")
        else:
            status, body = await self._run_line(row, line, request_id)
        answer = {
            "id": f"batch_req_{request_id}",
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        (output if status == 200 else errors).append(answer)
        column = "completed" if status == 200 else "failed"
        await self.db.write(
            lambda conn: conn.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (row["id"],))
        )

    async def _run_line(self, row: dict[str, Any], line: dict[str, Any], request_id: str) -> tuple[int, dict]:
        """The line's answer as its owner; while the owner's budget is spent, wait for it."""
        while True:
            user = await self.account(row["user"])
            if user is None or user["status"] != "approved":
                raise RuntimeError(f"the batch's owner {row['user']} is no longer an approved user")
            try:
                return await self.run_line(Actor(user=user, client="batch"), line["url"], line["body"], request_id)
            except BudgetExceeded as exc:
                wait = float(exc.headers.get("Retry-After", BUDGET_RECHECK_SECONDS))
                await asyncio.sleep(min(wait, BUDGET_RECHECK_SECONDS))  # a moved clock is seen soon

    async def _count(self, row: dict[str, Any], output: _Answers, errors: _Answers) -> None:
        """The counts and file sizes as the files say (after a restart, the truth)."""
        completed, failed = output.count(), errors.count()
        await self._set(row["id"], completed=completed, failed=failed)
        await self.files.refresh_size(row["output_file_id"], completed)
        await self.files.refresh_size(row["error_file_id"], failed)

    async def _row(self, batch_id: str, user: str | None = None) -> dict[str, Any]:
        def run(conn):
            return conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()

        row = await self.db.read(run)
        if row is None or (user is not None and row["user"] != user):
            raise NotFound(f"no batch {batch_id!r}", reason="not_found")
        return dict(row)

    async def _set(self, row_id: str, **values: Any) -> None:
        await self.db.update("batches", row_id, **values)


class _Answers:
    """An output or error file, appended one whole line per answer."""

    def __init__(self, path: Path):
        self.path = path
        self._out: Any = None
        self._lines = 0

    def recover(self) -> set[str]:
        """The custom_ids answered already; a partial last line (a crash mid-write) is cut off."""
        data = self.path.read_bytes() if self.path.exists() else b""
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            with open(self.path, "r+b") as out:
                out.truncate(len(whole))
        ids = {json.loads(line)["custom_id"] for line in whole.splitlines() if line.strip()}
        self._lines = len(ids)
        return ids

    def append(self, answer: dict[str, Any]) -> None:
        if self._out is None:
            self._out = open(self.path, "ab")  # noqa: SIM115 - kept open for the batch's life
        self._out.write(json.dumps(answer).encode() + b"\n")
        self._out.flush()
        self._lines += 1

    def count(self) -> int:
        return self._lines

    def close(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The input file's requests (checked at upload), in order."""
    return [json.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]


def _first_url(path: Path) -> str | None:
    with open(path, "rb") as source:
        for raw in source:
            if raw.strip():
                return json.loads(raw).get("url")
    return None


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
