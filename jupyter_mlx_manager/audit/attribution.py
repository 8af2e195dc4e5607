"""The notebook behind a request: a kernel's `X-MLX-Kernel-Id` and `X-MLX-Cell-Id` headers,
checked against the Jupyter server's own sessions, become audit fields (`Actor.context`).

Only the Jupyter server knows which notebook a kernel runs for. A kernel id is trusted only
when the kernel belongs to a session of the requesting user:

- a request that Jupyter itself authenticated (its token, its cookie, a JupyterHub token) comes
  from someone Jupyter lets read this server's sessions (checked with the server's authorizer,
  `read` on `sessions`), so every session of the server is theirs (a single-user server, or
  a Hub user's server);
- a request with a JWT of ours is trusted only for the server's own user: the owner account on a
  plain server (`c.MLXManager.owner_username`), the Hub user whose server this is under a Hub.

Anything else (an id that is no session, a session of a server that is not the caller's, a
malformed header) is ignored entirely: no notebook, kernel or cell is recorded.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from typing import Any

from tornado import web

KERNEL_ID_HEADER = "X-MLX-Kernel-Id"
CELL_ID_HEADER = "X-MLX-Cell-Id"

# Kernel ids are uuids on a stock server; cell ids follow nbformat (letters, digits, - and _,
# at most 64). Anything else is not looked up at all.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

log = logging.getLogger(__name__)


def valid_id(value: Any) -> str | None:
    """`value` if it is a well-formed kernel or cell id, else None."""
    return value if isinstance(value, str) and ID_PATTERN.fullmatch(value) else None


def server_username(mlx: Any) -> str | None:
    """The account that this server's sessions belong to, for requests with a JWT of ours."""
    hub_user = os.environ.get("JUPYTERHUB_USER")
    if os.environ.get("JUPYTERHUB_API_TOKEN") and hub_user:
        return hub_user
    return getattr(mlx, "owner_username", None) or None


async def _may_read_sessions(handler: Any) -> bool:
    if getattr(handler, "_jwt_authenticated", False):
        own = server_username(handler.services)
        user = handler.mlx_user or {}
        return bool(own) and str(user.get("username", "")).lower() == own.lower()
    authorizer = getattr(handler, "authorizer", None)
    if authorizer is None or handler.current_user is None:
        return False
    allowed = authorizer.is_authorized(handler, handler.current_user, "read", "sessions")
    if inspect.isawaitable(allowed):
        allowed = await allowed
    return bool(allowed)


async def session_path(session_manager: Any, kernel_id: str) -> str | None:
    """The path of the server session whose kernel is `kernel_id`, or None."""
    if session_manager is None:
        return None
    try:
        session = await session_manager.get_session(kernel_id=kernel_id)
    except (web.HTTPError, KeyError, LookupError):  # no such session, or its kernel is gone
        return None
    path = (session or {}).get("path")
    return path if isinstance(path, str) and path else None


async def attribution(handler: Any) -> dict[str, str]:
    """The audit fields {notebook, kernel_id, cell_id} for this request, or {}."""
    kernel_id = valid_id(handler.request.headers.get(KERNEL_ID_HEADER))
    if kernel_id is None or handler.actor is None:
        return {}
    if not await _may_read_sessions(handler):
        return {}
    path = await session_path(handler.settings.get("session_manager"), kernel_id)
    if path is None:
        return {}
    fields = {"notebook": path, "kernel_id": kernel_id}
    cell_id = valid_id(handler.request.headers.get(CELL_ID_HEADER))
    if cell_id is not None:
        fields["cell_id"] = cell_id
    return fields


async def attribute(handler: Any) -> None:
    """Fill `handler.actor.context` with the notebook behind the request (after authentication).
    Never fails the request: attribution is a nice-to-have of the audit trail."""
    if KERNEL_ID_HEADER not in handler.request.headers or handler.actor is None:
        return
    try:
        fields = await attribution(handler)
    except Exception:  # pragma: no cover - a session manager of another kind
        log.warning("jupyter-mlx-manager: cannot attribute a request to its notebook", exc_info=True)
        return
    handler.actor.context.update(fields)
