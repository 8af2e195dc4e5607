"""Fixtures: a real Jupyter server (pytest-jupyter) with the extension, and an HTTP helper."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

pytest_plugins = ["pytest_jupyter.jupyter_server"]

OWNER = "owner"
JWT_SECRET = "test-secret-" + "x" * 40


def server_config(models_dir: Any = None, **overrides: Any) -> dict[str, Any]:
    """`c.MLXManager` of a test server: the owner account, the tests' JWT secret, the models folder
    (if any), then the test's own settings."""
    config: dict[str, Any] = {"owner_username": OWNER, "jwt_secret": JWT_SECRET}
    if models_dir is not None:
        config["model_dirs"] = [str(models_dir)]
    return {**config, **overrides}


@pytest.fixture
def mlx_config() -> dict[str, Any]:
    """Per-test overrides of c.MLXManager (a test module can override this fixture)."""
    return server_config()


@pytest.fixture
def jp_server_config(tmp_path, mlx_config):
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_mlx_manager": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
        },
        # No spare runner unless a test asks for one: it would only cost CPU at every server start.
        "MLXManager": {"data_dir": str(tmp_path / "mlx-data"), "warm_runner": False, **mlx_config},
    }


@pytest.fixture
def mlx_app(jp_serverapp):
    """The running MLXManager extension app."""
    return jp_serverapp.web_app.settings["jupyter_mlx_manager"]


@dataclass
class Reply:
    code: int
    body: Any
    headers: Any


@pytest.fixture
def api(jp_fetch):
    """`await api(method, path, auth=..., body=...)` → Reply; never raises on HTTP errors.

    auth: "jupyter" (the Jupyter token, as a kernel would send it), None (no credential),
    or a JWT string (sent as `Authorization: Bearer`).
    """

    async def call(
        method: str, path: str, auth: str | None = "jupyter", body: Any = None, headers=None, params=None, raw_body=None
    ):
        headers = dict(headers or {})
        if auth is None:
            headers.setdefault("Authorization", "")
        elif auth != "jupyter":
            headers["Authorization"] = f"Bearer {auth}"
        if raw_body is None and body is not None:
            raw_body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        if raw_body is None and method in ("POST", "PATCH", "PUT"):
            raw_body = ""
        response = await jp_fetch(
            *path.split("/"),
            method=method,
            body=raw_body,
            headers=headers,
            params=params,
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        text = response.body.decode() if response.body else ""
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Reply(response.code, parsed, response.headers)

    return call


@pytest.fixture
def make_user(api):
    """Register a user, optionally approve (as the owner) and log in; returns (user, access token)."""

    async def make(username: str, password: str = "correct horse battery", approve: bool = True, admin: bool = False):
        reply = await api("POST", "mlx/api/auth/register", auth=None, body={"username": username, "password": password})
        assert reply.code == 201, reply.body
        user = reply.body
        if approve or admin:
            patch = {"status": "approved"} | ({"is_admin": True} if admin else {})
            reply = await api("PATCH", f"mlx/api/users/{user['id']}", body=patch)
            assert reply.code == 200, reply.body
            user = reply.body
            reply = await api(
                "POST", "mlx/api/auth/login", auth=None, body={"username": username, "password": password}
            )
            assert reply.code == 200, reply.body
            return user, reply.body["access_token"]
        return user, None

    return make
