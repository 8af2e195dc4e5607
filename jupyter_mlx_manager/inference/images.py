"""Images in chat requests, checked in the server before any runner sees them.

An image part arrives as a data URL (`data:image/png;base64,…`, OpenAI's `image_url`) or as
base64 with a media type (Anthropic's `source`). It is decoded here (strict base64), bounded
(`MAX_IMAGE_BYTES` each, `ImageLimits.max_images` per request) and recognised by its first bytes
(PNG, JPEG, GIF, WebP, BMP — what the image processors read), so a runner receives only bytes
that claim to be an image. http(s) URLs are refused unless `c.MLXManager.allow_image_urls`
(the server would fetch them: SSRF); and even then this version does not fetch, it refuses
them with a message that says so.

The server's limits (`ImageLimits`, from its traits) are held by the inference service; the
image bytes each user has in flight (`ImagesInFlight`) by the handlers, which decide on them
before a body is read.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from ..errors import PayloadTooLarge, TooManyRequests

MAX_IMAGE_BYTES = 20 * 1024 * 1024
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


@dataclass
class ImageLimits:
    max_images: int = 8
    allow_urls: bool = False


class ImageRefused(ValueError):
    """Why an image part is refused (the caller names the field)."""


def sniff(data: bytes) -> str | None:
    """The image type its first bytes say, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def decode(url: str | None, data: str | None, media_type: str | None, allow_urls: bool = False) -> str:
    """The image's bytes as base64 (re-encoded, canonical), or ImageRefused."""
    if url is not None and data is None:
        match = _DATA_URL.match(url)
        if match is None:
            if re.match(r"https?://", url, re.IGNORECASE):
                if not allow_urls:
                    raise ImageRefused("image URLs are not allowed on this server; send the image as a data URL")
                raise ImageRefused("this server does not fetch image URLs yet; send the image as a data URL")
            raise ImageRefused("an image must be a data URL (data:image/…;base64,…)")
        media_type, data = match.group("type"), url[match.end() :]
    if not data:
        raise ImageRefused("the image has no data")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageRefused(f"an image may be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    if media_type is not None and not media_type.lower().startswith("image/"):
        raise ImageRefused(f"{media_type} is not an image type")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("the image is not valid base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise ImageRefused(f"an image may be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    if sniff(raw) is None:
        raise ImageRefused("the data is not a PNG, JPEG, GIF, WebP or BMP image")
    return base64.b64encode(raw).decode()


class ImagesInFlight:
    """The bytes of image-carrying request bodies each user has in flight, bounded
    (`c.MLXManager.max_image_mb_in_flight`): held from the request's `Content-Length` before
    its body is read, released when the request ends. One server-wide account, on the event loop."""

    retry_after_seconds = 2

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self._held: dict[Any, int] = {}

    def held(self, user: Any) -> int:
        return self._held.get(user, 0)

    def hold(self, user: Any, size: int) -> ImageBytesHeld:
        """`size` bytes more for `user`, or 413 (more than the whole allowance: never admitted)
        or 429 with Retry-After (the user's requests in flight hold the rest)."""
        self._take(user, size, size)
        return ImageBytesHeld(self, user, size)

    def _take(self, user: Any, size: int, request_size: int) -> None:
        if request_size > self.limit:
            raise PayloadTooLarge(
                f"a request carrying images may be at most {self.limit // (1024 * 1024)} MB on this server",
                reason="images_too_large",
            )
        held = self._held.get(user, 0)
        if held + size > self.limit:
            raise TooManyRequests(
                f"your requests in flight already carry {held // (1024 * 1024)} MB of the "
                f"{self.limit // (1024 * 1024)} MB of images allowed at once; try again when they finish",
                reason="images_in_flight",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        self._held[user] = held + size

    def _release(self, user: Any, size: int) -> None:
        left = self._held.get(user, 0) - size
        if left > 0:
            self._held[user] = left
        else:
            self._held.pop(user, None)


@dataclass
class ImageBytesHeld:
    """Bytes held for one request; `release()` once, when it ends."""

    account: ImagesInFlight
    user: Any
    size: int

    def grow(self, more: int) -> None:
        """`more` bytes of a body whose length was not declared (chunked); 413 or 429 as `hold`."""
        self.account._take(self.user, more, self.size + more)
        self.size += more

    def release(self) -> None:
        self.account._release(self.user, self.size)
