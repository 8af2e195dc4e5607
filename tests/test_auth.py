"""Users, logins, tokens and the auth matrix, through a real Jupyter server."""

from __future__ import annotations

import asyncio
import time

import jwt
from conftest import JWT_SECRET, OWNER

# Every authenticated route, with a body that would be valid for an approved admin.
ROUTES = [
    ("GET", "mlx/api/status", None),
    ("GET", "mlx/api/auth/me", None),
    ("GET", "mlx/api/auth/tokens", None),
    ("POST", "mlx/api/auth/tokens", {"name": "t"}),
    ("DELETE", "mlx/api/auth/tokens/999", None),
    ("POST", "mlx/api/auth/ticket", None),
    ("GET", "mlx/api/users", None),
    ("PATCH", "mlx/api/users/1", {"status": "approved"}),
    ("DELETE", "mlx/api/users/999", None),
    ("GET", "mlx/api/audit", None),
]


async def test_jupyter_requests_act_as_the_owner_admin(api):
    reply = await api("GET", "mlx/api/auth/me")
    assert reply.code == 200
    assert reply.body["username"] == OWNER
    assert reply.body["is_admin"] is True and reply.body["status"] == "approved"
    assert reply.body["client"] == "kernel"


async def test_status_reports_version_device_and_memory(api):
    reply = await api("GET", "mlx/api/status")
    assert reply.code == 200
    from jupyter_mlx_manager import __version__

    assert reply.body["version"] == __version__
    assert reply.body["device"]["type"] == "cpu"
    assert reply.body["memory"]["total_bytes"] > reply.body["memory"]["available_bytes"] > 0


async def test_register_pending_until_approved(api):
    reply = await api(
        "POST", "mlx/api/auth/register", auth=None, body={"username": "bob", "password": "long enough pw"}
    )
    assert reply.code == 201
    assert reply.body["status"] == "pending" and reply.body["is_admin"] is False
    assert set(reply.body) == {"id", "username", "status", "is_admin", "created_at"}

    login = {"username": "bob", "password": "long enough pw"}
    reply = await api("POST", "mlx/api/auth/login", auth=None, body=login)
    assert reply.code == 403 and reply.body["reason"] == "pending"

    assert (await api("PATCH", "mlx/api/users/2", body={"status": "approved"})).code == 200
    reply = await api("POST", "mlx/api/auth/login", auth=None, body=login)
    assert reply.code == 200
    assert reply.body["token_type"] == "bearer" and reply.body["expires_in"] == 24 * 3600
    me = await api("GET", "mlx/api/auth/me", auth=reply.body["access_token"])
    assert me.code == 200 and me.body["username"] == "bob"


async def test_register_rejects_bad_input(api):
    for body in (
        {"username": "../x", "password": "long enough pw"},
        {"username": "a" * 65, "password": "long enough pw"},
        {"username": "bоb", "password": "long enough pw"},  # Cyrillic о
        {"username": "bob\n", "password": "long enough pw"},
        {"username": "bob", "password": "short"},
        {"username": 5, "password": "long enough pw"},
        {"password": "long enough pw"},
    ):
        reply = await api("POST", "mlx/api/auth/register", auth=None, body=body)
        assert reply.code == 400, (body, reply.body)
        assert reply.body["message"]
    reply = await api(
        "POST", "mlx/api/auth/register", auth=None, body={"username": OWNER, "password": "long enough pw"}
    )
    assert reply.code == 409


async def test_auth_matrix(api, make_user):
    _, pending_token = await make_user("pending-user", approve=False), None
    # A pending user cannot log in, so sign a token for them as a stolen/old one would be.
    pending_token = jwt.encode(
        {"sub": "2", "typ": "access", "iat": int(time.time()), "exp": int(time.time()) + 600},
        JWT_SECRET,
        algorithm="HS256",
    )
    disabled, disabled_token = await make_user("disabled-user")
    assert (await api("PATCH", f"mlx/api/users/{disabled['id']}", body={"status": "disabled"})).code == 200
    _, plain_token = await make_user("plain-user")

    for method, path, body in ROUTES:
        none = await api(method, path, auth=None, body=body)
        assert none.code in (401, 403), (method, path, none.code)
        for token, reason in ((pending_token, "pending"), (disabled_token, "disabled")):
            reply = await api(method, path, auth=token, body=body)
            assert reply.code == 403, (method, path, reason, reply.code)
            assert reply.body["reason"] == reason
        reply = await api(method, path, auth="jupyter", body=body)
        assert reply.code < 500, (method, path, reply.code)
        assert reply.headers["Content-Type"].startswith("application/json")

    for method, path, body in ROUTES:
        reply = await api(method, path, auth=plain_token, body=body)
        if path.startswith("mlx/api/users"):
            assert reply.code == 403 and reply.body["reason"] == "admin_required", (method, path)
        else:
            assert reply.code in (200, 201, 404), (method, path, reply.code, reply.body)


def _forge(claims, key=JWT_SECRET, algorithm="HS256"):
    return jwt.encode(claims, key, algorithm=algorithm)


async def test_forged_and_expired_tokens_are_401(api):
    now = int(time.time())
    good = {"sub": "1", "typ": "access", "iat": now, "exp": now + 600}
    assert (await api("GET", "mlx/api/auth/me", auth=_forge(good))).code == 200

    valid = _forge(good)
    header, payload, signature = valid.split(".")
    tampered_payload = jwt.utils.base64url_encode(
        b'{"sub":"1","typ":"access","iat":%d,"exp":%d}' % (now, now + 99999)
    ).decode()
    forged = {
        "alg none": jwt.encode(good, None, algorithm="none") if hasattr(jwt, "encode") else None,
        "HS384": _forge(good, algorithm="HS384"),
        "wrong secret": _forge(good, key="another-secret-" + "y" * 40),
        "missing exp": _forge({k: v for k, v in good.items() if k != "exp"}),
        "missing iat": _forge({k: v for k, v in good.items() if k != "iat"}),
        "missing sub": _forge({k: v for k, v in good.items() if k != "sub"}),
        "expired": _forge({**good, "iat": now - 7200, "exp": now - 3600}),
        "iat in the future": _forge({**good, "iat": now + 3600, "exp": now + 7200}),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "unknown kind": _forge({**good, "typ": "root"}),
        "long ticket": _forge({**good, "typ": "ticket", "exp": now + 3600}),
        "api token without row": _forge({**good, "typ": "api", "jti": "12345"}),
        "garbage": "a.b.c",
    }
    for name, token in forged.items():
        reply = await api("GET", "mlx/api/auth/me", auth=token)
        assert reply.code == 401, (name, reply.code, reply.body)
        assert reply.body["reason"] == "invalid_token"


async def test_api_tokens_shown_once_listed_and_revocable(api, make_user):
    _, access = await make_user("carol")
    created = await api("POST", "mlx/api/auth/tokens", auth=access, body={"name": "notebook", "expires_in_days": 7})
    assert created.code == 201
    assert set(created.body) == {"id", "name", "token", "created_at", "expires_at"}
    token = created.body["token"]

    assert (await api("GET", "mlx/api/auth/me", auth=token)).body["client"] == "api_token"
    listed = await api("GET", "mlx/api/auth/tokens", auth=token)
    assert [t["name"] for t in listed.body["tokens"]] == ["notebook"]
    assert "token" not in listed.body["tokens"][0]

    # Someone else cannot revoke it; its owner can, and then it stops working at once.
    assert (await api("DELETE", f"mlx/api/auth/tokens/{created.body['id']}")).code == 404
    assert (await api("DELETE", f"mlx/api/auth/tokens/{created.body['id']}", auth=access)).code == 204
    assert (await api("GET", "mlx/api/auth/me", auth=token)).code == 401

    for bad in (
        {"name": ""},
        {"name": "x" * 101},
        {"name": "x", "expires_in_days": -1},
        {"name": "x", "expires_in_days": "7"},
    ):
        assert (await api("POST", "mlx/api/auth/tokens", auth=access, body=bad)).code == 400, bad


async def test_ticket_is_short_lived(api):
    reply = await api("POST", "mlx/api/auth/ticket")
    assert reply.code == 201 and 0 < reply.body["expires_in"] <= 120
    claims = jwt.decode(reply.body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["typ"] == "ticket" and claims["exp"] - claims["iat"] <= 120


async def test_last_admin_cannot_be_removed_or_demoted(api, make_user):
    for change in ({"is_admin": False}, {"status": "disabled"}, {"status": "pending"}):
        reply = await api("PATCH", "mlx/api/users/1", body=change)
        assert reply.code == 409 and reply.body["reason"] == "last_admin", change
    assert (await api("DELETE", "mlx/api/users/1")).code == 409

    second, second_token = await make_user("second-admin", admin=True)
    assert second["is_admin"] is True
    # With two admins, one may step down; then the remaining one is the last again.
    assert (await api("PATCH", "mlx/api/users/1", auth=second_token, body={"is_admin": False})).code == 200
    assert (await api("DELETE", f"mlx/api/users/{second['id']}", auth=second_token)).code == 409
    assert (
        await api("PATCH", f"mlx/api/users/{second['id']}", auth=second_token, body={"status": "disabled"})
    ).code == 409


async def test_admin_manages_users(api, make_user):
    user, token = await make_user("dave")
    users = (await api("GET", "mlx/api/users")).body["users"]
    assert [u["username"] for u in users] == [OWNER, "dave"]
    assert (await api("PATCH", f"mlx/api/users/{user['id']}", body={"is_admin": True})).body["is_admin"] is True
    assert (await api("PATCH", f"mlx/api/users/{user['id']}", body={"status": "nope"})).code == 400
    assert (await api("PATCH", f"mlx/api/users/{user['id']}", body={"is_admin": "yes"})).code == 400
    assert (await api("PATCH", f"mlx/api/users/{user['id']}", body={"owner": True})).code == 400
    assert (await api("PATCH", "mlx/api/users/999", body={"status": "approved"})).code == 404
    assert (await api("DELETE", f"mlx/api/users/{user['id']}")).code == 204
    # The deleted user's still-valid JWT no longer opens anything.
    assert (await api("GET", "mlx/api/auth/me", auth=token)).code == 401


async def test_failed_logins_are_throttled(api, make_user):
    await make_user("erin", password="the right password")
    for _ in range(5):
        reply = await api(
            "POST", "mlx/api/auth/login", auth=None, body={"username": "erin", "password": "wrong password"}
        )
        assert reply.code == 401
    reply = await api("POST", "mlx/api/auth/login", auth=None, body={"username": "erin", "password": "wrong password"})
    assert reply.code == 429 and int(reply.headers["Retry-After"]) > 0
    # Even the right password waits: the throttle is checked before the password.
    reply = await api(
        "POST", "mlx/api/auth/login", auth=None, body={"username": "erin", "password": "the right password"}
    )
    assert reply.code == 429


async def test_bad_bodies_are_4xx_json(api):
    path = "mlx/api/auth/tokens"
    assert (await api("POST", path, raw_body="{not json", headers={"Content-Type": "application/json"})).code == 400
    assert (await api("POST", path, raw_body="[1, 2]", headers={"Content-Type": "application/json"})).code == 400
    assert (
        await api("POST", path, raw_body="name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    ).code == 415
    big = '{"name": "' + "x" * (70 * 1024) + '"}'
    reply = await api("POST", path, raw_body=big, headers={"Content-Type": "application/json"})
    assert reply.code == 413 and reply.body["reason"] == "payload_too_large"


async def test_concurrent_first_registrations_make_exactly_one_admin(tmp_path):
    """Service level, no owner: 30 registrations race on an empty database."""
    from jupyter_mlx_manager.audit import AuditLog
    from jupyter_mlx_manager.auth import TokenIssuer, UserService
    from jupyter_mlx_manager.storage import Database

    db = Database(tmp_path / "db.sqlite3")
    db.open()
    users = UserService(db, TokenIssuer(JWT_SECRET), AuditLog(db))
    try:
        created = await asyncio.gather(*(users.register(f"user{i}", "long enough pw") for i in range(30)))
        admins = [u for u in created if u["is_admin"]]
        assert len(admins) == 1 and admins[0]["status"] == "approved"
        assert sum(u["status"] == "pending" for u in created) == 29
    finally:
        db.close()


async def test_a_ticket_is_not_a_bearer_token(api, make_user):
    """A leaked ticket (it travels in URLs) can neither mint an API token nor renew itself."""
    _, access = await make_user("ticket-holder")
    ticket = (await api("POST", "mlx/api/auth/ticket", auth=access)).body["token"]
    for method, path, body in (
        ("POST", "mlx/api/auth/tokens", {"name": "from a ticket"}),
        ("POST", "mlx/api/auth/ticket", None),
        ("GET", "mlx/api/auth/me", None),
    ):
        for headers in ({"Authorization": f"Bearer {ticket}"}, {"Authorization": "", "x-api-key": ticket}):
            reply = await api(method, path, auth=None, body=body, headers=headers)
            assert reply.code == 401 and reply.body["reason"] == "ticket_not_bearer", (method, path, headers)
    assert (await api("GET", "mlx/api/auth/tokens", auth=access)).body["tokens"] == []
    # Where ?token= is allowed, the same ticket works.
    reply = await api("GET", "mlx/api/audit/export", auth=None, params={"token": ticket, "format": "csv"})
    assert reply.code == 200


async def test_x_api_key_carries_our_tokens_like_bearer(api, make_user):
    """The anthropic SDK sends its key as `x-api-key`: a JWT of ours there is a credential, POSTs
    included (no XSRF: no browser attaches it by itself)."""
    _, access = await make_user("anthropic-user")
    api_token = (await api("POST", "mlx/api/auth/tokens", auth=access, body={"name": "sdk"})).body["token"]
    headers = {"Authorization": "", "x-api-key": api_token}
    me = await api("GET", "mlx/api/auth/me", auth=None, headers=headers)
    assert me.code == 200 and me.body["username"] == "anthropic-user" and me.body["client"] == "api_token"
    assert (await api("POST", "mlx/api/auth/ticket", auth=None, headers=headers)).code == 201
    forged = await api("GET", "mlx/api/auth/me", auth=None, headers={"Authorization": "", "x-api-key": "a.b.c"})
    assert forged.code == 401 and forged.body["reason"] == "invalid_token"


async def test_a_hub_user_adopting_a_pending_account_does_not_inherit_its_password(api, mlx_app):
    """Someone registered `alice` before the Hub user alice first came: the account becomes
    hers, and the stranger's password no longer signs in."""
    from jupyter_mlx_manager.auth.hub import account_for_hub_user

    password = "the stranger's password"
    reply = await api("POST", "mlx/api/auth/register", auth=None, body={"username": "alice", "password": password})
    assert reply.code == 201 and reply.body["status"] == "pending"
    account = await account_for_hub_user(mlx_app.users, "alice", hub_admin=True)
    assert account["status"] == "approved" and account["is_admin"]
    login = await api("POST", "mlx/api/auth/login", auth=None, body={"username": "alice", "password": password})
    assert login.code == 401


async def test_deleting_a_user_deletes_their_stored_responses(api, make_user, mlx_app):
    user, _ = await make_user("carol")
    await mlx_app.db.write(
        lambda conn: conn.execute(
            "INSERT INTO responses (id, user, created_at, expires_at, body, history) VALUES (?, ?, ?, ?, ?, ?)",
            ("resp_1", "carol", "2026-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "{}", "[]"),
        )
    )
    assert (await api("DELETE", f"mlx/api/users/{user['id']}")).code == 204
    left = await mlx_app.db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    assert left == 0
