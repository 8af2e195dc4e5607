"""JWTs issued by this extension: HS256 only, `exp`/`iat`/`sub` required, little leeway.

Three kinds, told apart by the `typ` claim: `access` (from a password login), `api`
(long-lived API tokens; their `jti` must match a live, unrevoked row in the database) and
`ticket` (at most 120 s, meant for `?token=` on SSE and WebSocket URLs).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
MAX_TICKET_SECONDS = 120
PLACEHOLDER_SECRET = "CHANGE_ME_IN_PRODUCTION_USE_ENV_VAR"
SECRET_ENV = "JUPYTER_MLX_MANAGER_JWT_SECRET"
MIN_SECRET_BYTES = 32
TOKEN_KINDS = ("access", "api", "ticket")


class InvalidToken(Exception):
    """The token is malformed, forged, of the wrong kind or expired (answered with 401)."""


@dataclass(frozen=True)
class Claims:
    user_id: int
    kind: str
    token_id: int | None


def looks_like_jwt(value: str | None) -> bool:
    """Jupyter's own tokens are hex strings; ours always have three dot-separated parts."""
    return bool(value) and value.count(".") == 2


def resolve_secret(configured: str, data_dir: Path, log: logging.Logger) -> str:
    """Configured secret, else the environment, else a random one kept in a 0600 file."""
    secret = configured or os.environ.get(SECRET_ENV, "")
    if secret:
        if secret == PLACEHOLDER_SECRET or len(secret.encode()) < MIN_SECRET_BYTES:
            log.warning(
                "The configured JWT secret is insecure (the placeholder value or shorter than "
                "%d bytes): anyone who guesses it can sign in as any user. Set "
                "c.MLXManager.jwt_secret or %s to a long random value.",
                MIN_SECRET_BYTES,
                SECRET_ENV,
            )
        return secret
    path = data_dir / "jwt_secret"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a private temp file, then linked into place: a concurrent reader
        # (the CLI, a second server) never sees a half-written secret, and one writer wins.
        fd, temp = tempfile.mkstemp(dir=data_dir, prefix=".jwt_secret-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
            try:
                os.link(temp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temp)
    secret = path.read_text().strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise RuntimeError(
            f"{path} holds a JWT secret shorter than {MIN_SECRET_BYTES} bytes: delete it to generate a new one"
        )
    return secret


class TokenIssuer:
    def __init__(self, secret: str):
        self._secret = secret

    def issue(self, user_id: int, kind: str, lifetime_seconds: float, token_id: int | None = None) -> str:
        assert kind in TOKEN_KINDS
        now = int(time.time())
        claims = {"sub": str(user_id), "typ": kind, "iat": now, "exp": now + int(lifetime_seconds)}
        if token_id is not None:
            claims["jti"] = str(token_id)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        if claims["iat"] > time.time() + LEEWAY_SECONDS:
            raise InvalidToken("token issued in the future")
        kind = claims.get("typ")
        if kind not in TOKEN_KINDS:
            raise InvalidToken("unknown token kind")
        if kind == "ticket" and claims["exp"] - claims["iat"] > MAX_TICKET_SECONDS:
            raise InvalidToken("ticket lifetime too long")
        try:
            user_id = int(claims["sub"])
            token_id = int(claims["jti"]) if kind == "api" else None
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidToken("malformed subject or token id") from exc
        return Claims(user_id=user_id, kind=kind, token_id=token_id)
