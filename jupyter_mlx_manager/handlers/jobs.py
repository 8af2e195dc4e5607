"""`mlx/api/jobs…`: start, list, follow (SSE) and cancel workbench jobs (fine-tune, evaluate,
convert). Who sees and cancels which job is the job service's decision (each call takes the user)."""

from __future__ import annotations

from .audit import int_argument
from .base import MLXAPIHandler, authorized, web
from .events import EventStreamHandler


class JobsHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        limit = int_argument(self, "limit", 100, 1, 1000)
        self.write_json({"jobs": await self.services.jobs.list(self.mlx_user, limit)})

    @web.authenticated
    @authorized
    async def post(self):
        self.write_json(await self.services.jobs.create(self.mlx_user, self.actor.client, self.json_body()), status=202)


class JobHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        self.write_json(await self.services.jobs.get(self.mlx_user, job_id))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str):
        self.write_json(await self.services.jobs.cancel(self.mlx_user, job_id))


class JobEventsHandler(EventStreamHandler):
    """The job now, then each progress event (a fine-tune's iteration, losses, tokens/s, ETA),
    then a last one with `"final": true`."""

    def events(self, job_id: str):
        return self.services.jobs.follow(self.mlx_user, job_id)
