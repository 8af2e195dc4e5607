"""Errors raised by the services, each carrying the HTTP status a handler answers with.

They are tornado `HTTPError`s so that a service error raised inside any handler becomes a
JSON error reply (`{"message", "reason"}`) without per-handler translation code.
"""

from __future__ import annotations

import re

from tornado.web import HTTPError


class MLXError(HTTPError):
    status_code = 500
    reason = "error"

    def __init__(self, message: str, reason: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(self.status_code, message, reason=reason or self.reason)
        self.message = message
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.message


class BadRequest(MLXError):
    status_code = 400
    reason = "bad_request"


class InvalidParam(BadRequest):
    """A 400 naming the field at fault (`param`), in the protocol's own spelling, and the error's
    `code` if it has one: what the SDKs show as the argument that was wrong."""

    def __init__(self, message: str, param: str | None, code: str | None = None):
        super().__init__(message, reason="invalid_request_error")
        self.param = param
        self.code = code


class Unauthorized(MLXError):
    status_code = 401
    reason = "unauthorized"


class Forbidden(MLXError):
    status_code = 403
    reason = "forbidden"


class NotFound(MLXError):
    status_code = 404
    reason = "not_found"


class Conflict(MLXError):
    status_code = 409
    reason = "conflict"


class PayloadTooLarge(MLXError):
    status_code = 413
    reason = "payload_too_large"


class UnsupportedMediaType(MLXError):
    status_code = 415
    reason = "unsupported_media_type"


class TooManyRequests(MLXError):
    status_code = 429
    reason = "too_many_requests"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])~?/[\w.@+-]+(?:/[\w.@+-]+)*/?")


def scrub_paths(text: str, replacements: dict[str, str] | None = None) -> str:
    """A server-side message as users may read it (admins see it whole): each key of
    `replacements` (a path) becomes its value (say, the model id), any other absolute path `<path>`."""
    for path, label in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
        if path:
            text = text.replace(path, label)
    return _ABSOLUTE_PATH.sub("<path>", text)
