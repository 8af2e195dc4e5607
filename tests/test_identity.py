"""Identity providers that name people (JupyterHub, custom): each name maps to its own account."""

from __future__ import annotations

import pytest
from conftest import JWT_SECRET
from jupyter_server.auth import IdentityProvider, User


class HeaderIdentityProvider(IdentityProvider):
    """Like JupyterHub's provider, it gives stable names (here from a test header)."""

    def get_user(self, handler):
        name = handler.request.headers.get("X-Test-User")
        return User(username=name) if name else None

    def is_token_authenticated(self, handler):
        # Like a JupyterHub API token: an explicit credential, so no XSRF check.
        return bool(handler.request.headers.get("X-Test-User"))


@pytest.fixture
def mlx_config():
    return {"owner_username": "", "jwt_secret": JWT_SECRET}


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["identity_provider_class"] = HeaderIdentityProvider
    return jp_server_config


async def test_named_users_map_to_their_own_accounts(api):
    first = await api("GET", "mlx/api/auth/me", auth=None, headers={"X-Test-User": "hub-alice"})
    assert first.code == 200 and first.body["username"] == "hub-alice" and first.body["is_admin"] is True
    assert first.body["client"] == "kernel"  # token-authenticated, as a Hub API token is

    second = await api("GET", "mlx/api/auth/me", auth=None, headers={"X-Test-User": "hub-bob"})
    assert second.code == 403 and second.body["reason"] == "pending"

    users = (await api("GET", "mlx/api/users", auth=None, headers={"X-Test-User": "hub-alice"})).body["users"]
    bob = next(u for u in users if u["username"] == "hub-bob")
    approve = await api(
        "PATCH",
        f"mlx/api/users/{bob['id']}",
        auth=None,
        headers={"X-Test-User": "hub-alice"},
        body={"status": "approved"},
    )
    assert approve.code == 200
    again = await api("GET", "mlx/api/auth/me", auth=None, headers={"X-Test-User": "hub-bob"})
    assert again.code == 200 and again.body["username"] == "hub-bob" and again.body["is_admin"] is False
    assert (await api("GET", "mlx/api/auth/me", auth=None)).code in (401, 403)
