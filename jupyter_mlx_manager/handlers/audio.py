"""`POST mlx/v1/audio/transcriptions` (multipart) and `POST mlx/v1/audio/speech` (JSON → WAV),
OpenAI's: plain replies, no stream.

As for embeddings, the work runs as one task (`RequestTask`), so that a client that goes away
cancels it in the runner (a queued request leaves the queue) and server shutdown ends it with a 503.
"""

from __future__ import annotations

import asyncio

from ..inference.audio import MAX_UPLOAD_BYTES, parse_speech, parse_transcription
from .base import MLXAPIHandler, authorized, web
from .openai import OpenAIErrors
from .tasks import RequestTask


class TranscriptionsHandler(RequestTask, OpenAIErrors, MLXAPIHandler):
    max_body_bytes = MAX_UPLOAD_BYTES + 64 * 1024  # the file and the form's other fields

    @web.authenticated
    @authorized
    async def post(self):
        fields, upload = self.form_upload("the audio in a 'file' field")
        # Decoding and resampling up to 30 minutes of audio is seconds of CPU: never on the event loop.
        request = await asyncio.get_running_loop().run_in_executor(
            None, parse_transcription, fields, upload["body"] if upload else None
        )
        reply = await self.run_task(
            self.services.audio.transcribe(self.actor, self.request.path, request, self.request_id)
        )
        if reply is None:
            return
        if request.response_format == "text":
            self.finish(reply["text"], set_content_type="text/plain; charset=utf-8")
        elif request.response_format == "verbose_json":
            self.write_json({"task": "transcribe", **reply})
        else:
            self.write_json({"text": reply["text"]})


class SpeechHandler(RequestTask, OpenAIErrors, MLXAPIHandler):
    max_body_bytes = 64 * 1024  # 4,096 characters of input, as JSON

    @web.authenticated
    @authorized
    async def post(self):
        request = parse_speech(self.json_body())
        wav = await self.run_task(self.services.audio.speak(self.actor, self.request.path, request, self.request_id))
        if wav is None:
            return
        self.finish(wav, set_content_type="audio/wav")
