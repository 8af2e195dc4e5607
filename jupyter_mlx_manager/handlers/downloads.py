"""`mlx/api/downloads…`: start, list, follow (SSE) and cancel model downloads. Who sees and
cancels which download is the download manager's decision (each call takes the user)."""

from __future__ import annotations

from ..errors import BadRequest
from .base import MLXAPIHandler, authorized, web
from .events import EventStreamHandler


class DownloadsHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.write_json({"downloads": await self.services.downloads.list(user=self.mlx_user)})

    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        revision = body.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise BadRequest("revision must be a string", reason="invalid_revision")
        record, _ = await self.services.downloads.create(
            body.get("repo_id"), revision, user=self.mlx_user, client=self.actor.client
        )
        self.write_json(record, status=202)


class DownloadHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, download_id: str):
        self.write_json(await self.services.downloads.get(int(download_id), user=self.mlx_user))

    @web.authenticated
    @authorized
    async def delete(self, download_id: str):
        record = await self.services.downloads.cancel(int(download_id), self.mlx_user, client=self.actor.client)
        self.write_json(record)


class DownloadProgressHandler(EventStreamHandler):
    """Server-sent events: the record plus `rate_bps` and `eta_s`, at most 4 a second, a
    `: keepalive` comment after `keepalive_seconds` of silence, and a last event with
    `"final": true`. Without any credential, as with an invalid one, the answer is 401."""

    keepalive_seconds = 15.0
    min_interval = 0.25

    def events(self, download_id: str):
        return self.services.downloads.follow(
            int(download_id), self.min_interval, self.keepalive_seconds, user=self.mlx_user
        )
