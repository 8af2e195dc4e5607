"""JupyterHub single-user servers: Hub users map to our accounts, with the Hub's roles.

On a server spawned by JupyterHub, Jupyter's identity provider is JupyterHub's
(`jupyterhub.singleuser.extension.JupyterHubIdentityProvider`): it authenticates Hub cookies
and Hub API tokens against the Hub and hands the handler a user whose `hub_user` is the Hub's
user model (`name`, `admin`, `groups`, `scopes`). Here:

- a Hub user's account is the one of the same name, approved (the Hub already decided they
  may use this server); Hub admins (`admin: true`) and the server's owner (`$JUPYTERHUB_USER`)
  are approved admins. An account an admin of this server disabled stays disabled, unless its
  user is a Hub admin or the owner. Losing Hub admin rights does not demote an account here.
- a request one of our JWTs authenticated gets a `TokenHubUser`, pre-set as the handler's
  `_jupyterhub_user`: JupyterHub's identity provider then takes it as it is, so the JWT is
  never sent to the Hub's API, and JupyterHub's authorizer, which reads
  `user.hub_user["scopes"]`, finds the access scopes of this server (on our handlers only:
  the attribute lives on one handler instance).

Nothing here imports jupyterhub: it is not a dependency of the extension.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_server.auth import User

from ..storage import utcnow
from .users import USER_COLUMNS, UserService, _user, validate_username

__all__ = ["TokenHubUser", "account_for_hub_user", "hub_auth_of", "hub_model", "hub_owner"]


def hub_auth_of(identity_provider: Any) -> Any | None:
    """The `HubAuth` of JupyterHub's identity provider (a server under a Hub), else None."""
    hub_auth = getattr(identity_provider, "hub_auth", None)
    return hub_auth if hub_auth is not None and hasattr(hub_auth, "access_scopes") else None


def hub_model(user: Any) -> dict[str, Any] | None:
    """The Hub's user model of a Jupyter user JupyterHub authenticated, else None."""
    model = getattr(user, "hub_user", None)
    return model if isinstance(model, dict) and not isinstance(user, TokenHubUser) else None


def hub_owner() -> str:
    """The Hub user this single-user server belongs to ("" when not under a Hub)."""
    return os.environ.get("JUPYTERHUB_USER", "")


class TokenHubUser(User):
    """The Jupyter user of a request one of our JWTs authenticated on a Hub single-user server.

    Like JupyterHub's own `JupyterHubUser`, it carries a Hub-like user model in `hub_user`
    (not a dataclass field, so it stays out of Jupyter's identity model); its scopes are the
    ones this server requires for access, which the Hub's authorizer checks."""

    hub_user: dict[str, Any]

    def __init__(self, username: str, access_scopes: Any):
        super().__init__(username=username, name=username)
        self.hub_user = {
            "kind": "user",
            "name": username,
            "admin": False,  # roles come from our account, not from this model
            "groups": [],
            "scopes": sorted(access_scopes or ()),
        }


async def account_for_hub_user(users: UserService, name: str, hub_admin: bool) -> dict[str, Any]:
    """The account of a Hub user the Hub let into this server: created or brought up to the
    Hub's roles (an admin for Hub admins and the owner, else approved). Returns it as stored;
    the caller still checks its status (a disabled account stays disabled for other users)."""
    admin = bool(hub_admin) or (bool(hub_owner()) and name == hub_owner())
    user = await users.get_by_name(name)
    if user is not None and _up_to_date(user, admin):
        return user
    validate_username(name)

    def run(conn):
        before = _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (name,)).fetchone())
        if before is None:
            conn.execute(
                "INSERT INTO users (username, password_hash, status, is_admin, created_at) "
                "VALUES (?, NULL, 'approved', ?, ?)",
                (name, int(admin), utcnow()),
            )
        elif not _up_to_date(before, admin):
            status = "approved" if admin or before["status"] == "pending" else before["status"]
            # A pending account was never vouched for: whoever registered it and chose its
            # password is not known to be this Hub user, so the password goes (the Hub signs in).
            conn.execute(
                "UPDATE users SET status = ?, is_admin = MAX(is_admin, ?), "
                "password_hash = CASE WHEN status = 'pending' THEN NULL ELSE password_hash END WHERE id = ?",
                (status, int(admin), before["id"]),
            )
        after = _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (name,)).fetchone())
        return before, after

    before, after = await users.db.write(run)
    detail = "jupyterhub " + ("admin" if admin else "user")
    if before is None:
        await users.audit.record("auth.register", user=name, client="jupyterhub", detail=f"approved ({detail})")
    else:
        if before["status"] != after["status"]:
            await users.audit.record("user.approve", user=name, client="jupyterhub", detail=f"{name} ({detail})")
        if before["is_admin"] != after["is_admin"]:
            await users.audit.record("user.promote", user=name, client="jupyterhub", detail=f"{name} ({detail})")
    return after


def _up_to_date(user: dict[str, Any], admin: bool) -> bool:
    if admin:
        return user["status"] == "approved" and user["is_admin"]
    return user["status"] != "pending"
