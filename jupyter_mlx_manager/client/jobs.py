"""Workbench jobs from a kernel: `client.finetune(...)`, `evaluate(...)`, `convert(...)` return a
`Job`, whose display in a notebook is a live progress widget (a loss chart for fine-tunes) and
whose `wait()` returns the result. The job runs on the server: it goes on if the kernel stops
(`client.job(id)` finds it again)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from .results import Table

if TYPE_CHECKING:
    from .client import MLXClient

FINAL = ("succeeded", "failed", "cancelled", "interrupted")


class EvaluationTable(Table):
    columns = ("model", "perplexity", "accuracy", "tokens", "questions")
    empty = "no results"


class Job:
    def __init__(self, client: MLXClient, record: dict[str, Any]):
        self.client = client
        self.id = record["id"]
        self.record = record

    @property
    def status(self) -> str:
        return self.record["status"]

    def refresh(self) -> dict[str, Any]:
        self.record = self.client._get(f"mlx/api/jobs/{self.id}")
        return self.record

    def follow(self) -> Iterator[dict[str, Any]]:
        """The job's record at each change until it ends (the server's SSE stream; polling
        when the stream breaks, e.g. while the server restarts)."""
        while True:
            try:
                for event in self.client._sse(f"mlx/api/jobs/{self.id}/events"):
                    self.record = {k: v for k, v in event.items() if k not in ("event", "final")}
                    yield self.record
                    if event.get("final"):
                        return
            except httpx.TransportError:
                pass
            time.sleep(1)
            if self.refresh()["status"] in FINAL:
                yield self.record
                return

    def wait(self, timeout: float | None = None, progress: bool = True) -> Any:
        """The result once the job succeeded (an evaluation: its table); raises the job's
        error otherwise. Shows a progress bar meanwhile."""
        from .client import MLXManagerError

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            for record in self.follow():
                if progress:
                    bar = _advance(bar, record)
                if deadline is not None and time.monotonic() > deadline and record["status"] not in FINAL:
                    raise TimeoutError(f"job {self.id} is still {record['status']}")
        finally:
            if bar is not None:
                bar.close()
        if self.status != "succeeded":
            raise MLXManagerError(409, f"job {self.id} {self.status}: {self.record.get('error')}", self.status)
        result = self.record["result"]
        if self.record["type"] == "evaluate":
            return EvaluationTable(result["table"], title="Evaluation")
        return result

    def cancel(self) -> dict[str, Any]:
        self.record = self.client._request("DELETE", f"mlx/api/jobs/{self.id}")
        return self.record

    def _ipython_display_(self) -> None:
        from IPython.display import display

        from ..widgets import JobWidget

        display(JobWidget(self))

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.record['type']}: {self.status}>"


def _advance(bar: Any, record: dict[str, Any]) -> Any:
    progress = record.get("progress") or {}
    total = progress.get("iters") or progress.get("models")
    done = progress.get("iteration") or progress.get("models_done") or 0
    if bar is None and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{record['type']} {record['id']}")
    if bar is not None:
        bar.n = done
        if "train_loss" in progress:
            bar.set_postfix(loss=f"{progress['train_loss']:.3f}", refresh=False)
        bar.refresh()
    return bar
