"""One SQLite database (WAL) with a single writer thread and a small pool of readers.

Every write runs on one dedicated thread inside `BEGIN IMMEDIATE … COMMIT`, so concurrent
requests queue instead of failing with `database is locked`; reads run on reader threads.
Async callers never block the Tornado event loop; the CLI uses the `*_sync` variants.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .migrations import MIGRATIONS

T = TypeVar("T")


class DatabaseError(RuntimeError):
    """The database file is unusable (newer schema, corrupt, unwritable)."""


def utcnow() -> str:
    """Timestamps are stored as ISO 8601 UTC strings, which sort and compare correctly."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Database:
    def __init__(self, path: str | Path, readers: int = 4):
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="mlx-db-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="mlx-db-reader")
        self._closed = False

    # -- life cycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Create the file if needed and apply pending migrations (on the writer thread)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # password and token hashes
        self._writer.submit(self._migrate).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- access -----------------------------------------------------------------------------
    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in one write transaction on the writer thread."""
        return await asyncio.wrap_future(self._writer.submit(self._in_transaction, fn, *args))

    async def update(self, table: str, row_id: Any, **values: Any) -> None:
        """Set `values` (column → value; the names are ours, never a client's) on one row by `id`."""
        assignments = ", ".join(f"{name} = ?" for name in values)
        await self.write(
            lambda conn: conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", [*values.values(), row_id])
        )

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on a reader thread."""
        return await asyncio.wrap_future(self._readers.submit(self._run, fn, *args))

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._writer.submit(self._in_transaction, fn, *args).result()

    # -- internals (run on pool threads) ----------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._connection(), *args)

    def _in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # never leave the writer's connection inside a transaction
                conn.execute("ROLLBACK")
            raise
        return result

    def _migrate(self) -> None:
        try:
            conn = self._connection()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        if version > len(MIGRATIONS):
            raise DatabaseError(
                f"database {self.path} has schema version {version}, newer than this "
                f"jupyter-mlx-manager understands ({len(MIGRATIONS)}); upgrade the package"
            )
        for number in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_statements(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


def _split_statements(script: str) -> list[str]:
    """`executescript` would commit implicitly; run each statement inside our transaction."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    return statements
