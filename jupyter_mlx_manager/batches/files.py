"""Uploaded files (OpenAI's Files API): their records in SQLite, their bytes under
`<data_dir>/files/<id>`, each user's own.

A `batch` file is checked whole when it is uploaded, so a batch never starts on input it
cannot finish: JSON lines (at most MAX_LINES, at most MAX_FILE_BYTES in all), each an object
`{"custom_id", "method": "POST", "url", "body"}` with a unique `custom_id` and one `url` for
the whole file. Output and error files of batches are written here too (purpose
`batch_output`), line by line as their requests finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..errors import NotFound
from ..inference.request import InvalidParam
from ..storage import Database

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit for batch input
MAX_LINES = 50_000
MAX_CUSTOM_ID = 512
PURPOSES = ("batch", "fine-tune")
BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
FILE_COLUMNS = "id, user, filename, purpose, bytes, lines, created_at"


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """A file as OpenAI describes it."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
    }


def check_batch_lines(data: bytes) -> tuple[int, str]:
    """(line count, the one url) of a batch input file, or a 400 naming the first bad line."""
    urls, seen, count = set(), set(), 0
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        count += 1
        if count > MAX_LINES:
            raise InvalidParam(f"a batch file holds at most {MAX_LINES} requests", "file", "too_many_lines")
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidParam(f"line {number} is not JSON", "file", "invalid_jsonl") from None
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            raise InvalidParam(f"line {number} must be an object with a 'body' object", "file", "invalid_jsonl")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
            raise InvalidParam(f"line {number}: custom_id must be a non-empty string", "file", "invalid_jsonl")
        if custom_id in seen:
            raise InvalidParam(f"line {number}: custom_id {custom_id!r} is used twice", "file", "duplicate_custom_id")
        seen.add(custom_id)
        if line.get("method", "POST") != "POST":
            raise InvalidParam(f"line {number}: method must be POST", "file", "invalid_jsonl")
        if line.get("url") not in BATCH_URLS:
            raise InvalidParam(f"line {number}: url must be one of {', '.join(BATCH_URLS)}", "file", "invalid_url")
        urls.add(line["url"])
        if len(urls) > 1:
            raise InvalidParam(f"line {number}: every line of a batch must have the same url", "file", "mixed_urls")
    if not count:
        raise InvalidParam("the file holds no requests", "file", "empty_file")
    return count, urls.pop()


class FileStore:
    def __init__(self, db: Database, folder: Path):
        self.db = db
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, file_id: str) -> Path:
        return self.folder / file_id

    async def create(self, user: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise InvalidParam(f"purpose must be one of {', '.join(PURPOSES)}", "purpose", "invalid_purpose")
        if len(data) > MAX_FILE_BYTES:
            raise InvalidParam(f"a file may hold at most {MAX_FILE_BYTES // 2**20} MB", "file", "file_too_large")
        loop = asyncio.get_running_loop()
        lines = 0
        if purpose == "batch":
            lines, _ = await loop.run_in_executor(None, check_batch_lines, data)
        row = {
            "id": new_id("file-"),
            "user": user,
            "filename": (filename or "upload.jsonl")[:255],
            "purpose": purpose,
            "bytes": len(data),
            "lines": lines,
            "created_at": int(time.time()),
        }
        await loop.run_in_executor(None, _write_new, self.path(row["id"]), data)
        await self.db.write(_insert, row)
        return row

    async def content(self, user: str, file_id: str) -> AsyncIterator[bytes]:
        """A user's own file's bytes in 1 MiB blocks, each read off the event loop (a file may
        hold 200 MB; a disk that stalls stalls this download only)."""
        await self.get(user, file_id)
        loop = asyncio.get_running_loop()
        source = await loop.run_in_executor(None, open, self.path(file_id), "rb")
        try:
            while chunk := await loop.run_in_executor(None, source.read, 1024 * 1024):
                yield chunk
        finally:
            source.close()

    async def create_empty(self, user: str, filename: str) -> dict[str, Any]:
        """A `batch_output` file that a batch appends to."""
        row = {
            "id": new_id("file-"),
            "user": user,
            "filename": filename,
            "purpose": "batch_output",
            "bytes": 0,
            "lines": 0,
            "created_at": int(time.time()),
        }
        self.path(row["id"]).touch(mode=0o600)
        await self.db.write(_insert, row)
        return row

    async def get(self, user: str, file_id: str) -> dict[str, Any]:
        """A user's own file; another user's, or none, is a 404."""
        row = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {FILE_COLUMNS} FROM files WHERE id = ? AND user = ?", (file_id, user)
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"no file {file_id!r}", reason="not_found")
        return dict(row)

    async def list(self, user: str, purpose: str | None = None, limit: int = 10000) -> list[dict[str, Any]]:
        clause, params = ("AND purpose = ?", [purpose]) if purpose else ("", [])
        rows = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {FILE_COLUMNS} FROM files WHERE user = ? {clause} ORDER BY created_at DESC, id LIMIT ?",
                [user, *params, limit],
            ).fetchall()
        )
        return [dict(r) for r in rows]

    async def delete(self, user: str, file_id: str) -> None:
        await self.get(user, file_id)
        await self.db.write(lambda conn: conn.execute("DELETE FROM files WHERE id = ?", (file_id,)))
        self.path(file_id).unlink(missing_ok=True)

    async def refresh_size(self, file_id: str, lines: int) -> None:
        size = self.path(file_id).stat().st_size
        await self.db.write(
            lambda conn: conn.execute("UPDATE files SET bytes = ?, lines = ? WHERE id = ?", (size, lines, file_id))
        )


def _write_new(path: Path, data: bytes) -> None:
    """Written whole before it is recorded: a crash leaves no record of a half-written file."""
    partial = path.with_suffix(".partial")
    with open(partial, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(path)


def _insert(conn, row: dict[str, Any]) -> None:
    conn.execute(
        f"INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [row[k] for k in FILE_COLUMNS.split(", ")],
    )
