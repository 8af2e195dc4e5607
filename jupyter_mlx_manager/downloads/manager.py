"""`DownloadManager`: model downloads as persistent records, each transfer in a worker process.

A download is a row in the `downloads` table (migration 2) plus, while it is active, a
`Job` in memory with its live progress. At most `max_concurrent` workers run at once; the
rest wait `queued` in order. Asking again for a repo that is being downloaded returns the
same record. Cancelling stops the worker process (SIGTERM, then SIGKILL after a second)
and removes the partial files. Stopping the server stops the workers but leaves their
records `queued`/`downloading` and their partial files in place: the next start resumes
them, each worker continuing its partial files with HTTP Range requests.

Who sees what (SPEC "Shared resources"): a user sees the downloads they started (and, until
the server restarts, one they asked for while another user's was under way — they share its
record); admins see all. Another user's download id is 404 to `get`/`follow`, and only its
starter or an admin may cancel it (403). `refs/pr/N` revisions (unreviewed changes anyone can
propose) are for admins. The server's Hugging Face token goes only to admins' downloads unless
`hf_token_for_users`; other downloads send no token at all (not even an implicit one). Error
texts that may quote the server's paths or raw OS errors reach only admins; users get a plain
message for the same `error_kind`.

Progress is published to any number of followers (`follow()`, the SSE endpoint) as
snapshots of the record plus `rate_bps` and `eta_s`; the database is updated at most once a
second during a transfer and at every change of status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..auth.users import is_admin, username_of
from ..errors import BadRequest, Conflict, Forbidden, NotFound, scrub_paths
from ..models.ids import is_local_id, model_key, validate_model_id
from ..storage import utcnow
from .files import clean_repo_folder, existing_repo_id, repo_folder, valid_revision

ACTIVE = ("queued", "downloading")
FINAL = ("completed", "failed", "cancelled")
COLUMNS = (
    "id", "repo_id", "revision", "status", "downloaded_bytes", "total_bytes", "files_done", "files_total", "error",
    "created_at", "error_kind", "user", "commit_sha", "updated_at", "finished_at",
)  # fmt: skip
PERSIST_INTERVAL = 1.0
RATE_WINDOW = 5.0
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")
# Error kinds whose messages say nothing about the server (no paths, no OS error text).
PLAIN_ERROR_KINDS = {"not_found", "revision_not_found", "not_mlx", "offline", "unreachable", "bad_listing",
                     "unsafe_file_name", "checksum", "http", "aborted"}  # fmt: skip
USER_ERRORS = {
    "gated": "{repo_id} is gated or private: an administrator can download it with the server's Hugging Face token",
    "disk_space": "not enough free disk space on the server to download {repo_id}",
    "io": "the server could not write the files of {repo_id} (the server log has the details)",
    "network": "downloading {repo_id} failed after several attempts: the Hub could not be reached",
}
USER_ERROR_DEFAULT = "the download of {repo_id} failed on the server (the server log has the details)"


@dataclass
class Job:
    record: dict[str, Any]
    task: asyncio.Task | None = None
    process: asyncio.subprocess.Process | None = None
    cancelled: bool = False
    finished: bool = False
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    samples: deque = field(default_factory=lambda: deque(maxlen=200))
    started: float = field(default_factory=time.monotonic)
    last_persist: float = 0.0
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=10))
    use_token: bool = False  # the server's HF token goes to this transfer (an admin's, or hf_token_for_users)
    watchers: set = field(default_factory=set)  # lower-case names of users who asked for it too

    def visible_to(self, user: dict[str, Any] | None) -> bool:
        return _owns(self.record, user) or (username_of(user) or "").lower() in self.watchers

    @property
    def id(self) -> int:
        return self.record["id"]

    def rate(self) -> float | None:
        """Bytes per second over the last few seconds of this transfer."""
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 - t0 >= 0.2 else None


def public(record: dict[str, Any], user: dict[str, Any] | None = None) -> dict[str, Any]:
    """A download record as `user` may see it (None: the server, everything)."""
    out = {name: record.get(name) for name in COLUMNS if name != "commit_sha"}
    out["commit"] = record.get("commit_sha")
    if out["error"] and not is_admin(user):
        out["error"] = public_error(out["error"], out.get("error_kind"), out["repo_id"])
    return out


def public_error(error: str, kind: str | None, repo_id: str) -> str:
    """What a non-admin is told of a failure: no server paths, no raw OS or worker output."""
    if kind in PLAIN_ERROR_KINDS:
        return scrub_paths(error)
    return USER_ERRORS.get(kind or "", USER_ERROR_DEFAULT).format(repo_id=repo_id)


def _owns(record: dict[str, Any], user: dict[str, Any] | None) -> bool:
    """Admins (and the server) own every download; a user the ones they started."""
    if is_admin(user):
        return True
    starter = record.get("user")
    return starter is not None and starter.lower() == (username_of(user) or "").lower()


class DownloadManager:
    def __init__(
        self,
        db,
        audit,
        cache_dir: Path,
        endpoint: str | None = None,
        token: str | None = None,
        max_concurrent: int = 2,
        log: logging.Logger | None = None,
        min_free_bytes: int = 256 * 1024**2,
        hf_token_for_users: bool = False,
    ):
        self.db = db
        self.audit = audit
        self.cache_dir = Path(cache_dir)
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self._token = token or None  # never logged, never on a command line
        self.byte_listeners: list[Callable[[int], None]] = []  # called with bytes newly transferred (metrics)
        self.hf_token_for_users = bool(hf_token_for_users)  # else only admins' downloads use the token
        self.max_concurrent = max(1, int(max_concurrent))
        self.log = log or logging.getLogger(__name__)
        self.min_free_bytes = min_free_bytes
        self._jobs: dict[int, Job] = {}
        self._slots: asyncio.Semaphore | None = None
        self._create_lock: asyncio.Lock | None = None
        self._started: asyncio.Future | None = None
        self._stopping = False
        # model_keys being deleted from disk (ModelPool.delete_model, under `lock`): no download starts.
        self.deleting: set[str] = set()

    @property
    def lock(self) -> asyncio.Lock:
        """Held while a download is created (and by deletes): after `ready()`."""
        assert self._create_lock is not None, "start() first"
        return self._create_lock

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> asyncio.Future:
        """Resume the downloads a previous run left unfinished (idempotent)."""
        if self._started is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
            self._create_lock = asyncio.Lock()
            self._started = asyncio.ensure_future(self._resume())
        return self._started

    async def ready(self) -> None:
        await asyncio.shield(self.start())

    async def _resume(self) -> None:
        rows = await self.db.read(
            lambda conn: [
                dict(r) for r in conn.execute(f"SELECT * FROM downloads WHERE status IN {ACTIVE} ORDER BY id")
            ]
        )
        admins = await self.db.read(
            lambda conn: {
                r[0].lower()
                for r in conn.execute("SELECT username FROM users WHERE is_admin = 1 AND status = 'approved'")
            }
        )
        for row in rows:
            if row["id"] not in self._jobs:
                self.log.info("resuming the download of %s (id %d)", row["repo_id"], row["id"])
                starter = row.get("user")
                use_token = self.hf_token_for_users or starter is None or starter.lower() in admins
                self._launch(Job(record={**row, "status": "queued"}, use_token=use_token))

    async def stop(self) -> None:
        """Stop every worker; records stay active and resume at the next start."""
        self._stopping = True
        jobs = list(self._jobs.values())
        await asyncio.gather(*(self._kill(job) for job in jobs), return_exceptions=True)
        for job in jobs:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs if job.task is not None), return_exceptions=True)
        for job in jobs:
            with contextlib.suppress(Exception):
                await self._persist(job)
        self._jobs.clear()

    # -- public API ----------------------------------------------------------------------------
    async def create(
        self, repo_id: Any, revision: Any = None, user: dict[str, Any] | None = None, client: str | None = None
    ) -> tuple[dict, bool]:
        """Start downloading `repo_id` for `user` (None: the server), or join the download of it
        already under way: (record, created)."""
        repo_id = validate_model_id(repo_id)
        if is_local_id(repo_id):
            raise BadRequest("local/… ids name models in the model folders, not Hub repos", reason="invalid_model_id")
        revision = "main" if revision is None else revision
        if not valid_revision(revision):
            raise BadRequest("revision must be a branch, tag or commit id (ASCII, no '..')", reason="invalid_revision")
        if revision.lower().startswith("refs/pr/") and not is_admin(user):
            raise Forbidden(
                "pull-request revisions (refs/pr/N) hold changes nobody reviewed: only an administrator may download one",
                reason="admin_required",
            )
        await self.ready()
        # Ids are case-insensitive: a repo with files in the cache already keeps its folder.
        repo_id = await asyncio.get_running_loop().run_in_executor(None, existing_repo_id, self.cache_dir, repo_id)
        starter = username_of(user)
        async with self.lock:
            key = model_key(repo_id)
            if key in self.deleting:
                raise Conflict(f"{repo_id} is being deleted; try again in a moment", reason="model_deleting")
            for job in self._jobs.values():
                if model_key(job.record["repo_id"]) == key and not job.finished:
                    if job.record["revision"] == revision:
                        if starter is not None:
                            job.watchers.add(starter.lower())
                        return public(job.record, user), False
                    raise Conflict(
                        f"{job.record['repo_id']} is already being downloaded at revision "
                        f"{job.record['revision']!r}; wait for it or cancel it first",
                        reason="download_in_progress",
                    )
            now = utcnow()
            record = {name: None for name in COLUMNS}
            record.update(repo_id=repo_id, revision=revision, status="queued", downloaded_bytes=0, files_done=0,
                          created_at=now, updated_at=now, user=starter)  # fmt: skip
            record["id"] = await self.db.write(_insert, record)
            job = Job(record=record, use_token=is_admin(user) or self.hf_token_for_users)
            self._launch(job)
        await self.audit.record(
            "download.start",
            user=starter,
            client=client,
            model=repo_id,
            detail=f"id={record['id']} revision={revision}",
        )
        return public(record, user), True

    async def _record(self, download_id: int) -> tuple[dict[str, Any], Job | None]:
        job = self._jobs.get(download_id)
        if job is not None:
            return job.record, job
        row = await self.db.read(
            lambda conn: conn.execute("SELECT * FROM downloads WHERE id = ?", (download_id,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no download {download_id}", reason="download_not_found")
        return dict(row), None

    async def get(self, download_id: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
        """One download as `user` sees it; another user's is 404 to a non-admin."""
        record, job = await self._record(download_id)
        if not (job.visible_to(user) if job is not None else _owns(record, user)):
            raise NotFound(f"no download {download_id}", reason="download_not_found")
        return public(record, user)

    async def list(self, limit: int = 200, user: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Newest first; active downloads with their live progress. A non-admin sees their own.

        The jobs are taken before the read: a job that finishes during it (its row read while
        still `downloading`) is shown with its final record, not the stale row."""
        jobs = dict(self._jobs)
        if is_admin(user):
            query, args = "SELECT * FROM downloads ORDER BY id DESC LIMIT ?", (limit,)
        else:
            watched = [job.id for job in jobs.values() if job.visible_to(user)]
            marks = ", ".join("?" * len(watched)) or "NULL"
            query = f"SELECT * FROM downloads WHERE user = ? COLLATE NOCASE OR id IN ({marks}) ORDER BY id DESC LIMIT ?"
            args = (username_of(user) or "", *watched, limit)
        rows = await self.db.read(lambda conn: [dict(r) for r in conn.execute(query, args)])
        return [public(jobs[r["id"]].record if r["id"] in jobs else r, user) for r in rows]

    def active_for(self, repo_id: str) -> dict[str, Any] | None:
        """The unfinished download of this model (ids compared case-insensitively), if any."""
        key = model_key(repo_id)
        for job in self._jobs.values():
            if model_key(job.record["repo_id"]) == key and not job.finished:
                return public(job.record)
        return None

    async def cancel(
        self, download_id: int, user: dict[str, Any] | None = None, client: str | None = None
    ) -> dict[str, Any]:
        """Stop a download and remove its partial files (its starter or an admin: else 403). A
        finished download is returned as it is; for a failed one, the partial files it kept (so
        that asking again resumes) are removed."""
        job = self._jobs.get(download_id)
        if job is None or job.finished:
            record = job.record if job is not None else (await self._record(download_id))[0]
            _check_owner(record, user)
            if record["status"] == "failed":
                await self.ready()
                async with self.lock:  # no new download of this repo starts while we clean
                    if self.active_for(record["repo_id"]) is None:
                        loop = asyncio.get_running_loop()
                        await loop.run_in_executor(None, clean_repo_folder, self.cache_dir, record["repo_id"])
            return public(record, user)
        _check_owner(job.record, user)
        job.cancelled = True
        if job.process is not None:
            await self._kill(job)
        elif job.task is not None:
            job.task.cancel()
        if job.task is not None:
            await asyncio.gather(job.task, return_exceptions=True)
        if job.finished:  # it completed (or failed) just before the stop reached it
            return public(job.record, user)
        loop = asyncio.get_running_loop()
        freed = await loop.run_in_executor(None, clean_repo_folder, self.cache_dir, job.record["repo_id"])
        self.log.info("cancelled the download of %s (id %d); removed %d bytes", job.record["repo_id"], job.id, freed)
        await self._finish(job, "cancelled")
        await self.audit.record(
            "download.cancel", status="cancelled", user=username_of(user), client=client,
            model=job.record["repo_id"], detail=f"id={job.id}",
        )  # fmt: skip
        return public(job.record, user)

    async def follow(
        self,
        download_id: int,
        min_interval: float = 0.25,
        keepalive: float = 15.0,
        user: dict[str, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Snapshots of a download as `user` may see it, as it changes (at most one per
        `min_interval`), ending with a final one; None when nothing changed for `keepalive`
        seconds. Another user's download is 404 to a non-admin, before anything is sent."""
        await self.get(download_id, user)
        last = -1
        while True:
            job = self._jobs.get(download_id)
            if job is None or job.finished:
                record = public(job.record, user) if job is not None else await self.get(download_id, user)
                done = record["status"] == "completed"
                yield {**record, "rate_bps": None, "eta_s": 0 if done else None, "final": True}
                return
            if job.version != last:
                last = job.version
                yield self._snapshot(job, user)
                await asyncio.sleep(min_interval)
                continue
            try:
                await asyncio.wait_for(job.changed.wait(), keepalive)
            except TimeoutError:
                yield None

    # -- internals -----------------------------------------------------------------------------
    def _snapshot(self, job: Job, user: dict[str, Any] | None = None) -> dict[str, Any]:
        record = public(job.record, user)
        rate = job.rate() if record["status"] == "downloading" else None
        eta = None
        if rate and record["total_bytes"]:
            eta = round(max(record["total_bytes"] - record["downloaded_bytes"], 0) / rate, 1) if rate > 0 else None
        return {**record, "rate_bps": None if rate is None else int(rate), "eta_s": eta, "final": False}

    def _launch(self, job: Job) -> None:
        self._jobs[job.id] = job
        job.task = asyncio.ensure_future(self._run(job))

    def _changed(self, job: Job) -> None:
        job.version += 1
        job.changed.set()
        job.changed = asyncio.Event()

    async def _update(self, job: Job, persist: bool = False, **fields: Any) -> None:
        job.record.update(fields, updated_at=utcnow())
        self._changed(job)
        if persist or time.monotonic() - job.last_persist >= PERSIST_INTERVAL:
            await self._persist(job)

    async def _persist(self, job: Job) -> None:
        job.last_persist = time.monotonic()
        record = dict(job.record)
        await self.db.write(_save, record)

    async def _finish(self, job: Job, status: str, error: str | None = None, kind: str | None = None) -> None:
        job.finished = True
        fields: dict[str, Any] = {"status": status, "error": error, "error_kind": kind, "finished_at": utcnow()}
        if status == "completed":
            fields["downloaded_bytes"] = job.record.get("total_bytes") or job.record["downloaded_bytes"]
            fields["files_done"] = job.record.get("files_total") or job.record["files_done"]
        await self._update(job, persist=True, **fields)
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]

    async def _run(self, job: Job) -> None:
        assert self._slots is not None
        async with self._slots:
            if job.cancelled or self._stopping:
                return
            job.started = time.monotonic()
            await self._update(job, persist=True, status="downloading")
            try:
                outcome = await self._transfer(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of ours must not leave the record "downloading" forever
                self.log.exception("download %d of %s failed", job.id, job.record["repo_id"])
                outcome = ("failed", f"internal error: {type(exc).__name__}", "internal")
            if outcome is None or self._stopping or (job.cancelled and outcome[0] != "completed"):
                return  # cancel() or stop() takes it from here
            status, error, kind = outcome
            # Finished before the slot is released: never more than max_concurrent "downloading".
            await self._finish(job, status, error, kind)
        repo_id, user = job.record["repo_id"], job.record.get("user")
        duration_ms = (time.monotonic() - job.started) * 1000
        if status == "completed":
            self.log.info(
                "downloaded %s (%d bytes) in %.1f s", repo_id, job.record["total_bytes"] or 0, duration_ms / 1000
            )
            await self.audit.record("download.complete", user=user, client="server", model=repo_id, duration_ms=duration_ms,
                                    detail=f"id={job.id} bytes={job.record['total_bytes']}")  # fmt: skip
        else:
            self.log.warning("download of %s failed: %s", repo_id, error)
            await self.audit.record("download.fail", status="error", user=user, client="server", model=repo_id,
                                    duration_ms=duration_ms, error_type=kind, detail=f"id={job.id}: {error}"[:1000])  # fmt: skip

    async def _transfer(self, job: Job) -> tuple[str, str | None, str | None] | None:
        """Run one worker to its end: ("completed"|"failed", error, kind), or None if it was stopped."""
        env = {
            **{k: v for k, v in os.environ.items() if job.use_token or k not in TOKEN_ENV},
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_CACHE": str(self.cache_dir),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jupyter_mlx_manager.downloads.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, env=env, limit=4 * 1024 * 1024,
        )  # fmt: skip
        job.process = process
        assert process.stdin is not None and process.stdout is not None
        stderr = asyncio.ensure_future(self._drain_stderr(job, process))
        # False: no token at all (huggingface_hub would otherwise fall back to a saved one).
        token = self._token if job.use_token else False
        config = {"repo_id": job.record["repo_id"], "revision": job.record["revision"], "cache_dir": str(self.cache_dir),
                  "endpoint": self.endpoint, "token": token}  # fmt: skip
        self._send(process, config)
        outcome = None
        try:
            async for line in process.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.get("ev")
                if kind == "plan":
                    job.samples.clear()
                    job.samples.append((time.monotonic(), event["downloaded_bytes"]))
                    await self._update(
                        job, persist=True, total_bytes=event["total_bytes"], files_total=event["files_total"],
                        downloaded_bytes=event["downloaded_bytes"], files_done=event["files_done"], commit_sha=event["commit"],
                    )  # fmt: skip
                    problem = await self._disk_problem(
                        job.record["repo_id"], event["total_bytes"] - event["downloaded_bytes"]
                    )
                    if problem is not None:
                        outcome = ("failed", problem, "disk_space")
                        self._send(process, {"cmd": "abort"})
                    else:
                        self._send(process, {"cmd": "go"})
                elif kind == "progress":
                    job.samples.append((time.monotonic(), event["downloaded_bytes"]))
                    while len(job.samples) > 2 and job.samples[-1][0] - job.samples[0][0] > RATE_WINDOW:
                        job.samples.popleft()
                    new = event["downloaded_bytes"] - (job.record["downloaded_bytes"] or 0)
                    if new > 0:
                        for listener in self.byte_listeners:
                            listener(new)
                    await self._update(job, downloaded_bytes=event["downloaded_bytes"], files_done=event["files_done"])
                elif kind == "retry":
                    self.log.info("download of %s: retrying %s (attempt %s): %s", job.record["repo_id"], event.get("file"),
                                  event.get("attempt"), event.get("error"))  # fmt: skip
                elif kind == "done":
                    outcome = ("completed", None, None)
                elif kind == "error" and outcome is None:
                    outcome = ("failed", str(event.get("message", "download failed")), str(event.get("kind", "error")))
        finally:
            code = await process.wait()
            await asyncio.gather(stderr, return_exceptions=True)
            job.process = None
        if outcome is None and not (job.cancelled or self._stopping):
            detail = "; ".join(list(job.stderr_tail)[-2:]) or "no output"
            outcome = ("failed", f"the download worker exited with code {code}: {detail}"[:500], "worker_exit")
        return outcome

    @staticmethod
    def _send(process: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.write(json.dumps(message).encode() + b"\n")

    async def _drain_stderr(self, job: Job, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                job.stderr_tail.append(text[:300])
                self.log.debug("download worker %s: %s", job.record["repo_id"], text[:300])

    async def _kill(self, job: Job, grace: float = 1.0) -> None:
        process = job.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def free_bytes(self, path: Path) -> int:
        """Free space on the file system holding `path` (its nearest existing ancestor)."""
        while not path.exists() and path.parent != path:
            path = path.parent
        return shutil.disk_usage(path).free

    async def _disk_problem(self, repo_id: str, needed: int) -> str | None:
        folder = repo_folder(self.cache_dir, repo_id)
        free = await asyncio.get_running_loop().run_in_executor(None, self.free_bytes, folder)
        if needed + self.min_free_bytes <= free:
            return None
        return (
            f"not enough free disk space to download {repo_id}: it needs {_gib(needed)} more and "
            f"{_gib(free)} is free in {self.cache_dir} (keeping {_gib(self.min_free_bytes)} free)"
        )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _insert(conn, record: dict[str, Any]) -> int:
    names = [n for n in COLUMNS if n != "id"]
    cursor = conn.execute(
        f"INSERT INTO downloads ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", [record[n] for n in names]
    )
    return cursor.lastrowid


def _save(conn, record: dict[str, Any]) -> None:
    names = [n for n in COLUMNS if n not in ("id", "repo_id", "revision", "created_at", "user")]
    assignments = ", ".join(f"{n} = ?" for n in names)
    conn.execute(f"UPDATE downloads SET {assignments} WHERE id = ?", [*(record[n] for n in names), record["id"]])


def _check_owner(record: dict[str, Any], user: dict[str, Any] | None) -> None:
    if not _owns(record, user):
        raise Forbidden("only the user who started a download, or an administrator, can cancel it", reason="not_yours")
