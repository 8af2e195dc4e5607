"""Browser-style cookie sessions (XSRF), owner-less servers, and tokens kept out of logs."""

from __future__ import annotations

import asyncio
import logging
import time
from http.cookies import SimpleCookie

import jwt
import pytest
from conftest import JWT_SECRET


def _cookies(response_headers) -> dict[str, str]:
    jar = SimpleCookie()
    for header in response_headers.get_list("Set-Cookie"):
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


async def test_cookie_post_needs_xsrf_but_bearer_jwt_does_not(api, make_user):
    login_page = await api("GET", "login", auth=None)
    xsrf = _cookies(login_page.headers)["_xsrf"]
    signed_in = await api("GET", "mlx/api/status")  # token-authenticated: Jupyter sets its login cookie
    session = {k: v for k, v in _cookies(signed_in.headers).items() if k.startswith("username-")}
    assert session, "Jupyter did not set a login cookie"
    cookie_header = "; ".join(f"{k}={v}" for k, v in session.items())

    reply = await api("GET", "mlx/api/auth/me", auth=None, headers={"Cookie": cookie_header})
    assert reply.code == 200 and reply.body["client"] == "browser"

    body = {"name": "from the browser"}
    reply = await api("POST", "mlx/api/auth/tokens", auth=None, body=body, headers={"Cookie": cookie_header})
    assert reply.code == 403, "a cookie-authenticated POST without XSRF must be refused"

    headers = {"Cookie": f"{cookie_header}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    reply = await api("POST", "mlx/api/auth/tokens", auth=None, body=body, headers=headers)
    assert reply.code == 201
    # JupyterLab also sends the Jupyter token: its login cookie marks it as a browser...
    reply = await api(
        "GET", "mlx/api/auth/me", headers={"X-XSRFToken": xsrf, "Cookie": f"{cookie_header}; _xsrf={xsrf}"}
    )
    assert reply.body["client"] == "browser"
    # ...an XSRF header is the caller's choice: with the token and no login cookie it is a kernel.
    reply = await api("GET", "mlx/api/auth/me", headers={"X-XSRFToken": xsrf, "Cookie": f"_xsrf={xsrf}"})
    assert reply.body["client"] == "kernel"

    _, access = await make_user("frank")
    reply = await api("POST", "mlx/api/auth/tokens", auth=access, body=body)
    assert reply.code == 201, "a bearer-JWT POST needs no XSRF token"


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


async def test_tokens_never_reach_the_logs(api, jp_ws_fetch, jp_serverapp, make_user):
    capture = _Capture()
    capture.setFormatter(logging.Formatter("%(name)s %(message)s"))
    loggers = [
        logging.getLogger(n)
        for n in ("", "tornado.access", "tornado.application", "tornado.general", "ServerApp", "MLXManager")
    ]
    loggers.append(jp_serverapp.log)
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    try:
        password = "a very secret password"
        user, access = await make_user("grace", password=password)
        ticket = (await api("POST", "mlx/api/auth/ticket", auth=access)).body["token"]
        api_token = (await api("POST", "mlx/api/auth/tokens", auth=access, body={"name": "n"})).body["token"]
        forged = jwt.encode(
            {"sub": "1", "typ": "ticket", "iat": int(time.time()), "exp": int(time.time()) + 60}, "w" * 40
        )

        ws = await jp_ws_fetch("mlx", "api", "audit", "ws", params={"token": ticket}, headers={"Authorization": ""})
        ws.close()
        ws = await jp_ws_fetch("mlx", "api", "audit", "ws", params={"token": forged}, headers={"Authorization": ""})
        assert await ws.read_message() is None and ws.close_code == 1008
        # A JWT in the query string of a plain REST route is not accepted, and not logged either.
        reply = await api("GET", "mlx/api/audit", auth=None, params={"token": api_token})
        assert reply.code == 401
        # Where ?token= is allowed, only tickets are; refusals and errors are logged without it.
        reply = await api("GET", "mlx/api/audit/export", auth=None, params={"token": api_token})
        assert reply.code == 401 and reply.body["reason"] == "ticket_required"
        reply = await api("GET", "mlx/api/downloads/999/progress", auth=None, params={"token": ticket})
        assert reply.code == 404
        reply = await api("GET", "mlx/api/audit/export", auth=None, params={"token": ticket, "format": "xml"})
        assert reply.code == 400
        await api(
            "POST",
            "mlx/api/auth/login",
            auth=None,
            raw_body=f'{{"username": "grace", "password": "{password}"',
            headers={"Content-Type": "application/json"},
        )
        await asyncio.sleep(0.2)
    finally:
        for lg, level in saved:
            lg.removeHandler(capture)
            lg.setLevel(level)
    text = "\n".join(capture.lines)
    assert "mlx/api/audit" in text, "the capture saw no request log at all"
    for secret in (ticket, api_token, access, forged, password, jp_serverapp.identity_provider.token):
        assert secret not in text


class TestWithoutOwner:
    @pytest.fixture
    def mlx_config(self):
        # One address registers 30 accounts at once: the per-address limit is not what this tests.
        return {"owner_username": "", "jwt_secret": JWT_SECRET, "registration_limit": 0}

    async def test_thirty_concurrent_registrations_make_one_admin(self, api):
        replies = await asyncio.gather(
            *(
                api(
                    "POST", "mlx/api/auth/register", auth=None, body={"username": f"u{i}", "password": "long enough pw"}
                )
                for i in range(30)
            )
        )
        assert all(r.code == 201 for r in replies), [r.body for r in replies if r.code != 201]
        assert sum(r.body["is_admin"] for r in replies) == 1
        assert sum(r.body["status"] == "approved" for r in replies) == 1

    async def test_jupyter_auth_alone_must_sign_in(self, api):
        reply = await api("GET", "mlx/api/auth/me")
        assert reply.code == 401 and reply.body["reason"] == "login_required"
