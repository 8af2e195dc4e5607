"""The live audit WebSocket: auth before anything is sent (1008), live records, closing."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
from conftest import JWT_SECRET

from jupyter_mlx_manager.audit import Subscription


def _ticket(user_id: int) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": str(user_id), "typ": "ticket", "iat": now, "exp": now + 60}, JWT_SECRET, algorithm="HS256"
    )


async def _open(jp_ws_fetch, token=None, jupyter=False, **params):
    if token is not None:
        params["token"] = token
    headers = None if jupyter else {"Authorization": ""}
    return await jp_ws_fetch("mlx", "api", "audit", "ws", params=params, headers=headers)


async def _next(ws, timeout=5.0):
    message = await asyncio.wait_for(ws.read_message(), timeout)
    return None if message is None else json.loads(message)


async def test_refused_sockets_close_with_1008(api, jp_ws_fetch, make_user):
    pending, _ = await make_user("pending-ws", approve=False)
    disabled, _ = await make_user("disabled-ws")
    await api("PATCH", f"mlx/api/users/{disabled['id']}", body={"status": "disabled"})
    cases = {
        "no token": None,
        "invalid token": "not.a.jwt",
        "forged token": jwt.encode(
            {"sub": "1", "typ": "ticket", "iat": int(time.time()), "exp": int(time.time()) + 60}, "z" * 40
        ),
        "pending user": _ticket(pending["id"]),
        "disabled user": _ticket(disabled["id"]),
    }
    for name, token in cases.items():
        ws = await _open(jp_ws_fetch, token)
        assert await _next(ws) is None, f"{name}: the server sent data before refusing"
        assert ws.close_code == 1008, (name, ws.close_code)


async def test_live_records_filtered_by_permission(api, jp_ws_fetch, make_user):
    admin_ws = await _open(jp_ws_fetch, jupyter=True)
    user, access = await make_user("henry")
    ticket = (await api("POST", "mlx/api/auth/ticket", auth=access)).body["token"]
    user_ws = await _open(jp_ws_fetch, ticket)

    await api("POST", "mlx/api/auth/tokens", auth=access, body={"name": "mine"})
    await api("POST", "mlx/api/auth/tokens", body={"name": "the owner's"})

    seen_by_user = await _next(user_ws)
    assert seen_by_user["type"] == "record"
    assert seen_by_user["data"]["action"] == "token.create" and seen_by_user["data"]["user"] == "henry"
    admin_actions = []
    for _ in range(5):  # register, approve, login, and the two token creations
        message = await _next(admin_ws)
        admin_actions.append((message["data"]["action"], message["data"]["user"]))
    assert admin_actions == [
        ("auth.register", "henry"),
        ("user.approve", "owner"),
        ("auth.login", "henry"),
        ("token.create", "henry"),
        ("token.create", "owner"),
    ]
    # The user never sees the owner's record.
    try:
        unexpected = await asyncio.wait_for(user_ws.read_message(), 0.5)
    except TimeoutError:
        unexpected = None
    assert unexpected is None
    user_ws.close()
    admin_ws.close()


async def test_replay_and_records_api(api, jp_ws_fetch, make_user):
    await make_user("iris")
    ws = await _open(jp_ws_fetch, jupyter=True, replay=3)
    replayed = [await _next(ws) for _ in range(3)]
    listed = (await api("GET", "mlx/api/audit", params={"limit": "3"})).body
    assert [m["data"]["id"] for m in replayed] == [r["id"] for r in reversed(listed["records"])]
    assert listed["total"] >= 3
    ws.close()


async def test_disabling_a_user_closes_their_open_socket(api, jp_ws_fetch, make_user):
    user, access = await make_user("jack")
    ticket = (await api("POST", "mlx/api/auth/ticket", auth=access)).body["token"]
    ws = await _open(jp_ws_fetch, ticket)
    await api("PATCH", f"mlx/api/users/{user['id']}", body={"status": "disabled"})
    started = time.monotonic()
    while (message := await _next(ws, timeout=5)) is not None:
        assert message["type"] in ("record", "ping")
    assert ws.close_code == 1008
    assert time.monotonic() - started < 2
    assert (await api("GET", "mlx/api/auth/me", auth=access)).code == 403


async def test_server_shutdown_closes_with_1001(jp_ws_fetch, mlx_app):
    ws = await _open(jp_ws_fetch, jupyter=True)
    await mlx_app.stop_extension()
    assert await _next(ws) is None
    assert ws.close_code == 1001


async def test_slow_subscriber_gets_a_gap_marker_and_bounded_queue():
    subscription = Subscription(maxsize=3, accepts=lambda record: True)
    for i in range(10):
        subscription.offer({"id": i})
    assert len(subscription._items) <= 4
    messages = [await subscription.next(timeout=0.1) for _ in range(4)]
    assert [m["data"]["id"] for m in messages[:3]] == [0, 1, 2]
    assert messages[3] == {"type": "gap", "dropped": 7}
    subscription.offer({"id": 10})
    assert (await subscription.next(timeout=0.1))["data"]["id"] == 10
    assert await subscription.next(timeout=0.05) is None


async def test_losing_admin_rights_or_the_api_token_closes_the_socket(api, jp_ws_fetch, make_user):
    admin, admin_access = await make_user("kate", admin=True)
    ticket = (await api("POST", "mlx/api/auth/ticket", auth=admin_access)).body["token"]
    ws = await _open(jp_ws_fetch, ticket)
    await api("PATCH", f"mlx/api/users/{admin['id']}", body={"is_admin": False})
    while (message := await _next(ws)) is not None:
        assert message["type"] in ("record", "ping")
    assert ws.close_code == 1008, "a demoted admin must not keep everyone's records"

    user, access = await make_user("liam")
    created = (await api("POST", "mlx/api/auth/tokens", auth=access, body={"name": "ws"})).body
    ws = await jp_ws_fetch("mlx", "api", "audit", "ws", headers={"Authorization": f"Bearer {created['token']}"})
    assert (await api("DELETE", f"mlx/api/auth/tokens/{created['id']}", auth=access)).code == 204
    while (message := await _next(ws)) is not None:
        assert message["type"] in ("record", "ping")
    assert ws.close_code == 1008, "a revoked API token must not keep its socket"


async def test_only_tickets_open_sockets_from_the_url(api, jp_ws_fetch, make_user):
    _, access = await make_user("mona")
    ws = await _open(jp_ws_fetch, access)
    assert await _next(ws) is None and ws.close_code == 1008
