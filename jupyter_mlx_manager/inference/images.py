"""Images in chat requests, checked in the server before any runner sees them.

An image part arrives as a data URL (`data:image/png;base64,…`, OpenAI's `image_url`) or as
base64 with a media type (Anthropic's `source`). It is decoded here (strict base64), bounded
(`MAX_IMAGE_BYTES` each, `ImageLimits.max_images` per request) and recognised by its first bytes
(PNG, JPEG, GIF, WebP, BMP — what the image processors read), so a runner receives only bytes
that claim to be an image. http(s) URLs are refused unless `c.MLXManager.allow_image_urls`
(the server would fetch them: SSRF); and even then this version does not fetch, it refuses
them with a message that says so.

The server's limits (`ImageLimits`, from its traits) are held by the inference service.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

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
