"""`POST mlx/v1/audio/transcriptions` (multipart) and `POST mlx/v1/audio/speech` (JSON → WAV),
OpenAI's: plain replies, no stream.

As for embeddings, the work runs as one task, so that a client that goes away cancels it in
the runner (a queued request leaves the queue) and server shutdown ends it with a 503.
"""

from __future__ import annotations

import asyncio

from ..inference.audio import MAX_UPLOAD_BYTES, parse_speech, parse_transcription
from ..inference.request import InvalidParam
from .base import MLXAPIHandler, authorized, web
from .inference import ServerShuttingDown
from .openai import OpenAIErrors


class _AudioHandler(OpenAIErrors, MLXAPIHandler):
    def initialize(self, *args, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self._task: asyncio.Task | None = None
        self._shutting_down = False

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def end_for_shutdown(self) -> None:
        self._shutting_down = True
        if self._task is not None:
            self._task.cancel()

    async def _serve(self, work):
        """The reply of `work` (a coroutine), or None when the client left."""
        self.mlx.track_request(self)
        try:
            self._task = asyncio.ensure_future(work(self.mlx.audio))
            if self._shutting_down:
                self._task.cancel()
            try:
                return await self._task
            except asyncio.CancelledError:
                if self._shutting_down:
                    raise ServerShuttingDown("the server is shutting down; try again when it is back") from None
                return None  # the client left; its request was cancelled and recorded as such
        finally:
            self.mlx.untrack_request(self)


class TranscriptionsHandler(_AudioHandler):
    max_body_bytes = MAX_UPLOAD_BYTES + 64 * 1024  # the file and the form's other fields

    @web.authenticated
    @authorized
    async def post(self):
        if self._content_type() != "multipart/form-data":
            raise InvalidParam("send the audio as multipart/form-data with a 'file' field", "file", "invalid_body")
        fields = {k: v[0].decode("utf-8", "replace") for k, v in self.request.body_arguments.items() if v}
        files = self.request.files.get("file") or []
        # Decoding and resampling up to 30 minutes of audio is seconds of CPU: never on the event loop.
        request = await asyncio.get_running_loop().run_in_executor(
            None, parse_transcription, fields, files[0]["body"] if files else None
        )
        reply = await self._serve(
            lambda service: service.transcribe(self.actor, self.request.path, request, self.request_id)
        )
        if reply is None:
            return
        if request.response_format == "text":
            self.finish(reply["text"], set_content_type="text/plain; charset=utf-8")
        elif request.response_format == "verbose_json":
            self.write_json({"task": "transcribe", **reply})
        else:
            self.write_json({"text": reply["text"]})


class SpeechHandler(_AudioHandler):
    max_body_bytes = 64 * 1024  # 4,096 characters of input, as JSON

    @web.authenticated
    @authorized
    async def post(self):
        request = parse_speech(self.json_body())
        wav = await self._serve(lambda service: service.speak(self.actor, self.request.path, request, self.request_id))
        if wav is None:
            return
        self.finish(wav, set_content_type="audio/wav")
