"""OpenAI's Files and Batch API (`mlx/v1/files…`, `mlx/v1/batches…`), for the unmodified
`openai` SDK's `client.files` and `client.batches`: each user's own files and batches only
(another user's id is a 404). Errors use OpenAI's envelope."""

from __future__ import annotations

import contextlib

from ..batches.files import MAX_FILE_BYTES, file_object
from ..inference.request import InvalidParam
from .audit import int_argument
from .base import MLXAPIHandler, authorized, web
from .openai import OpenAIErrors


class FilesHandler(OpenAIErrors, MLXAPIHandler):
    max_body_bytes = MAX_FILE_BYTES + 64 * 1024  # the file and the form's other fields

    @web.authenticated
    @authorized
    async def post(self):
        fields, upload = self.form_upload("the file with 'file' and 'purpose' fields")
        if upload is None:
            raise InvalidParam("file is required", "file", "missing_file")
        row = await self.services.files.create(
            self.mlx_user["username"], upload.get("filename") or "", fields.get("purpose", ""), upload["body"]
        )
        self.write_json(file_object(row))

    @web.authenticated
    @authorized
    async def get(self):
        purpose = self.get_query_argument("purpose", None)
        rows = await self.services.files.list(self.mlx_user["username"], purpose)
        self.write_json({"object": "list", "data": [file_object(r) for r in rows], "has_more": False})


class FileHandler(OpenAIErrors, MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, file_id: str):
        self.write_json(file_object(await self.services.files.get(self.mlx_user["username"], file_id)))

    @web.authenticated
    @authorized
    async def delete(self, file_id: str):
        await self.services.files.delete(self.mlx_user["username"], file_id)
        self.write_json({"id": file_id, "object": "file", "deleted": True})


class FileContentHandler(OpenAIErrors, MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, file_id: str):
        content = self.services.files.content(self.mlx_user["username"], file_id)  # own files only
        self.set_header("Content-Type", "application/jsonl")  # an error clears it
        async with contextlib.aclosing(content):
            async for chunk in content:
                self.write(chunk)
                await self.flush()
        self.finish(set_content_type="application/jsonl")


class BatchesHandler(OpenAIErrors, MLXAPIHandler):
    max_body_bytes = 64 * 1024

    @web.authenticated
    @authorized
    async def post(self):
        self.write_json(await self.services.batches.create(self.mlx_user["username"], self.json_body()))

    @web.authenticated
    @authorized
    async def get(self):
        limit = int_argument(self, "limit", 20, 1, 100)
        after = self.get_query_argument("after", None)
        self.write_json(await self.services.batches.list(self.mlx_user["username"], limit, after))


class BatchHandler(OpenAIErrors, MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, batch_id: str):
        self.write_json(await self.services.batches.get(self.mlx_user["username"], batch_id))


class BatchCancelHandler(OpenAIErrors, MLXAPIHandler):
    @web.authenticated
    @authorized
    async def post(self, batch_id: str):
        self.write_json(await self.services.batches.cancel(self.mlx_user["username"], batch_id))
