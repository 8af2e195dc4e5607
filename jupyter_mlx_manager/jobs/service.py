"""Workbench jobs (fine-tune, evaluate, convert): records in SQLite, one child process each.

A job is created `queued`; at most `max_concurrent_jobs` run, the rest wait in order. Before it
starts, its memory estimate is reserved in the pool's budget (idle models are evicted to make
room, as for a load; while that is impossible it waits). Its process (`jobs/worker.py`) reports
progress as JSON lines: the job keeps the last one and, for fine-tunes, the loss curve, and
every subscriber of its event stream gets each one. It ends `succeeded` (a fine-tune's adapter is
then the model `adapter/<name>`, a conversion's `local/<name>`), `failed`, `cancelled` (its
process killed) or, when the server stopped under it, `interrupted` at the next start, with
what it had written kept (a fine-tune's checkpoints). Users see and cancel their own jobs;
admins everyone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..audit import AuditLog
from ..auth.users import is_admin
from ..errors import MLXError, NotFound
from ..models.ids import ADAPTER_PREFIX
from ..models.inspection import ADAPTER_MARKER
from ..pool import ModelPool
from ..pool.pool import PoolBusy
from ..storage import Database, utcnow
from .specs import JobSpecs

JOB_COLUMNS = "id, user, type, status, spec, progress, result, error, created_at, started_at, finished_at"
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
MAX_CURVE_POINTS = 2000  # a fine-tune's loss points kept in its record
WAIT_FOR_MEMORY_SECONDS = 2.0
KILL_WAIT_SECONDS = 10.0  # a killed worker is gone well within this
# What an adapter's folder borrows from its base: enough to list, count tokens and template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
                   "chat_template.jinja", "generation_config.json")  # fmt: skip


def job_object(row: dict[str, Any], progress: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = json.loads(row["spec"])
    public = {k: v for k, v in spec.items() if not k.endswith("_path") and k not in ("models", "type")}
    if spec["type"] == "evaluate":
        public["models"] = [m["id"] for m in spec["models"]]
    return {
        "id": row["id"],
        "type": row["type"],
        "status": row["status"],
        "user": row["user"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "params": public,
        "progress": progress if progress is not None else json.loads(row["progress"] or "{}"),
        "result": json.loads(row["result"]) if row["result"] else None,
        "error": row["error"],
    }


class JobService:
    def __init__(self, db: Database, audit: AuditLog, pool: ModelPool, specs: JobSpecs, max_concurrent: int, log: Any):
        self.db = db
        self.audit = audit
        self.pool = pool
        self.specs = specs
        self.max_concurrent = max(1, max_concurrent)
        self.log = log
        self._running: dict[str, asyncio.subprocess.Process | None] = {}
        self._tasks: set[asyncio.Task] = set()
        self._progress: dict[str, dict[str, Any]] = {}  # live progress of running jobs
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task | None = None

    # -- the API -----------------------------------------------------------------------------
    async def create(self, user: dict[str, Any], client: str, body: Any) -> dict[str, Any]:
        spec, memory = await asyncio.get_running_loop().run_in_executor(None, self.specs.build, user["username"], body)
        row = {
            "id": "job-" + secrets.token_hex(8),
            "user": user["username"],
            "type": spec["type"],
            "status": "queued",
            "spec": json.dumps({**spec, "memory_bytes": memory}),
            "progress": None,
            "result": None,
            "error": None,
            "created_at": utcnow(),
            "started_at": None,
            "finished_at": None,
        }
        await self.db.write(
            lambda conn: conn.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                [row[c] for c in JOB_COLUMNS.split(", ")],
            )
        )
        await self.audit.record(f"job.{spec['type']}", user=user["username"], client=client, detail=row["id"])
        self._wake.set()
        return job_object(row)

    async def list(self, user: dict[str, Any], limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("", []) if is_admin(user) else ("WHERE user = ?", [user["username"]])
        rows = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC LIMIT ?", [*params, limit]
            ).fetchall()
        )
        return [job_object(dict(r), self._progress.get(r["id"])) for r in rows]

    async def get(self, user: dict[str, Any], job_id: str) -> dict[str, Any]:
        row = await self._row(job_id, user)
        return job_object(row, self._progress.get(job_id))

    async def cancel(self, user: dict[str, Any], job_id: str) -> dict[str, Any]:
        row = await self._row(job_id, user)
        if row["status"] in FINAL:
            return job_object(row)
        process = self._running.get(job_id)
        await self._finish(job_id, "cancelled", error=f"cancelled by {user['username']}")
        if process is not None:  # its memory is free when the answer says cancelled
            _kill(process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), KILL_WAIT_SECONDS)
            self.pool.release(job_id)
        return await self.get(user, job_id)

    async def follow(self, user: dict[str, Any], job_id: str) -> AsyncIterator[dict[str, Any] | None]:
        """The job now, then each change (progress events), until it ends (a `final` event)."""
        await self._row(job_id, user)
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            job = await self.get(user, job_id)
            yield {**job, "final": job["status"] in FINAL}
            while job["status"] not in FINAL:
                try:
                    event = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield None  # a keep-alive
                    continue
                job = await self.get(user, job_id)
                yield {**job, "event": event, "final": job["status"] in FINAL}
        finally:
            self._subscribers.get(job_id, set()).discard(queue)

    # -- running -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Jobs a stopped server left running are `interrupted` (what they wrote is kept); the
        queue is served again."""
        rows = await self.db.read(
            lambda conn: conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running'").fetchall()
        )
        for row in rows:
            spec = json.loads(row["spec"])
            kept = _checkpoints(spec)
            await self._finish(
                row["id"], "interrupted", error="the server stopped while the job ran",
                result={"checkpoints": kept} if kept else None,
            )  # fmt: skip
        self._scheduler = asyncio.ensure_future(self._schedule())

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
        for process in list(self._running.values()):
            if process is not None:
                _kill(process)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self._running) < self.max_concurrent:
                row = await self.db.read(
                    lambda conn: conn.execute(
                        f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1"
                    ).fetchone()
                )
                if row is None:
                    break
                row = dict(row)
                self._running[row["id"]] = None
                await self._set(row["id"], status="running", started_at=utcnow())
                task = asyncio.ensure_future(self._run(row))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, row: dict[str, Any]) -> None:
        job_id, spec = row["id"], json.loads(row["spec"])
        try:
            while True:  # room in the memory budget first (idle models may be evicted)
                try:
                    await self.pool.reserve(job_id, spec["memory_bytes"])
                    break
                except PoolBusy:
                    self._publish(job_id, {"stage": "waiting for memory"})
                    await asyncio.sleep(WAIT_FOR_MEMORY_SECONDS)
            if (await self._row(job_id))["status"] != "running":
                return  # cancelled while it waited
            outcome = await self._work(job_id, spec)
            if outcome is not None:
                await self._finish(job_id, *outcome)
        except MLXError as exc:  # e.g. more memory than the whole budget
            await self._finish(job_id, "failed", error=exc.message)
        except Exception as exc:
            self.log.exception("job %s failed", job_id)
            await self._finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.pool.release(job_id)
            self._running.pop(job_id, None)
            self._progress.pop(job_id, None)
            self._wake.set()

    async def _work(self, job_id: str, spec: dict[str, Any]) -> tuple[str, str | None, dict | None] | None:
        """Run the worker; (status, error, result), or None when the job was ended meanwhile."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jupyter_mlx_manager.jobs.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, limit=16 * 1024 * 1024,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "JUPYTER_MLX_MANAGER_PARENT_PID": str(os.getpid())},
        )  # fmt: skip
        self._running[job_id] = process
        process.stdin.write(json.dumps(spec).encode())
        await process.stdin.drain()
        process.stdin.close()
        logs = asyncio.ensure_future(self._keep_log(job_id, process))
        result, error = None, None
        async for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("ev") == "progress":
                self._progress_event(job_id, spec, event)
            elif event.get("ev") == "result":
                result = {k: v for k, v in event.items() if k != "ev"}
            elif event.get("ev") == "error":
                error = str(event.get("message"))[:2000]
        code = await process.wait()
        tail = await logs
        if (await self._row(job_id))["status"] != "running":
            return None  # cancelled: its process was killed
        if code != 0 or result is None:
            return "failed", error or f"the job's process exited with code {code}: {tail[-500:]}", None
        return "succeeded", None, await self._publish_result(spec, result)

    async def _publish_result(self, spec: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """A fine-tune's adapter becomes the model `adapter/<name>` (its folder completed with
        the base's config and tokenizer files, then renamed into place)."""
        if spec["type"] != "finetune":
            return result
        partial = Path(spec["output_path"])
        final = partial.with_name(spec["name"])
        base = Path(spec["model_path"])

        def install() -> None:
            for name in ("config.json", *TOKENIZER_FILES):
                if (base / name).is_file():
                    shutil.copyfile(base / name, partial / name)
            (partial / ADAPTER_MARKER).write_text(json.dumps({"base": spec["model"], "base_path": str(base)}))
            partial.rename(final)

        await asyncio.get_running_loop().run_in_executor(None, install)
        return {**{k: v for k, v in result.items() if k != "adapter_path"}, "model": ADAPTER_PREFIX + spec["name"]}

    def _progress_event(self, job_id: str, spec: dict[str, Any], event: dict[str, Any]) -> None:
        progress = self._progress.setdefault(job_id, {})
        point = {k: v for k, v in event.items() if k != "ev"}
        if spec["type"] == "finetune":
            curve = progress.setdefault("curve", [])
            curve.append({k: point[k] for k in ("iteration", "train_loss", "val_loss") if k in point})
            del curve[:-MAX_CURVE_POINTS]
        progress.update({k: v for k, v in point.items() if k != "row"})
        if "row" in point:
            progress.setdefault("table", []).append(point["row"])
        self._publish(job_id, point)

    def _publish(self, job_id: str, event: dict[str, Any]) -> None:
        for queue in self._subscribers.get(job_id, ()):
            with contextlib.suppress(asyncio.QueueFull):  # a slow reader misses events, never memory
                queue.put_nowait(event)

    async def _keep_log(self, job_id: str, process: asyncio.subprocess.Process) -> str:
        tail = b""
        async for line in process.stderr:
            tail = (tail + line)[-4000:]
        return tail.decode(errors="replace")

    async def _finish(self, job_id: str, status: str, error: str | None = None, result: dict | None = None) -> None:
        progress = self._progress.get(job_id)
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if result is not None:
            values["result"] = json.dumps(result)
        if progress is not None:
            values["progress"] = json.dumps(progress)
        await self._set(job_id, **values)
        row = await self._row(job_id)
        await self.audit.record(
            f"job.{row['type']}", status="ok" if status == "succeeded" else "cancelled" if status == "cancelled" else "error",
            user=row["user"], client="job", detail=f"{job_id} {status}" + (f": {error}" if error else ""),
        )  # fmt: skip
        self._publish(job_id, {"status": status})

    async def _row(self, job_id: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
        row = await self.db.read(
            lambda conn: conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        if row is None or (user is not None and not is_admin(user) and row["user"] != user["username"]):
            raise NotFound(f"no job {job_id!r}", reason="not_found")
        return dict(row)

    async def _set(self, row_id: str, **values: Any) -> None:
        await self.db.update("jobs", row_id, **values)


def _checkpoints(spec: dict[str, Any]) -> list[str]:
    """What an interrupted fine-tune had saved (mlx-lm's checkpoints)."""
    if spec["type"] != "finetune":
        return []
    folder = Path(spec["output_path"])
    return sorted(str(p) for p in folder.glob("*adapters.safetensors")) if folder.is_dir() else []


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
