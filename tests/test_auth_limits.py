"""Unauthenticated endpoints are cheap to refuse: registration rate limit, login throttle
(no hash, no audit row per throttled attempt, parallel guesses counted) and bounded argon2
work, through a real Jupyter server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from jupyter_mlx_manager.auth import HashBudget, LoginThrottle, RateLimiter

REGISTER = "mlx/api/auth/register"
LOGIN = "mlx/api/auth/login"
PASSWORD = "long enough pw"


async def _login_rows(api, username):
    """Audit rows of login attempts for `username`, as the owner sees them."""
    reply = await api("GET", "mlx/api/audit", params={"user": username, "limit": "500"})
    assert reply.code == 200, reply.body
    return [r for r in reply.body["records"] if r["action"] == "auth.login"]


async def test_registration_burst_from_one_address_is_429_with_retry_after(api, mlx_app):
    limit = mlx_app.users.registrations.limit
    assert 1 <= limit <= 10  # a small burst by default
    for i in range(limit):
        reply = await api("POST", REGISTER, auth=None, body={"username": f"burst{i}", "password": PASSWORD})
        assert reply.code == 201, (i, reply.body)
    budget = mlx_app.users.register_budget
    pending_before = budget.pending
    for i in range(3):
        reply = await api("POST", REGISTER, auth=None, body={"username": f"late{i}", "password": PASSWORD})
        assert reply.code == 429, reply.body
        assert reply.body["reason"] == "registration_throttled"
        assert 0 < int(reply.headers["Retry-After"]) <= mlx_app.users.registrations.window
    assert budget.pending == pending_before  # refused before a hash was queued
    users = (await api("GET", "mlx/api/users")).body["users"]
    assert not any(u["username"].startswith("late") for u in users)
    # Bad input and refusals do not use up the allowance; another address has its own.
    assert mlx_app.users.registrations.count("127.0.0.1") == limit
    assert mlx_app.users.registrations.acquire("192.0.2.7") == 0


async def test_invalid_registrations_do_not_count_and_are_not_hashed(api, mlx_app):
    for _ in range(10):
        reply = await api("POST", REGISTER, auth=None, body={"username": "../x", "password": PASSWORD})
        assert reply.code == 400
    assert mlx_app.users.registrations.count("127.0.0.1") == 0
    reply = await api("POST", REGISTER, auth=None, body={"username": "fine", "password": PASSWORD})
    assert reply.code == 201


async def test_throttled_logins_add_at_most_a_handful_of_audit_rows(api, make_user, mlx_app):
    await make_user("frank", password="the right password")
    wrong = {"username": "frank", "password": "wrong password"}
    for _ in range(mlx_app.users.throttle.free_attempts):
        assert (await api("POST", LOGIN, auth=None, body=wrong)).code == 401
    before = len(await _login_rows(api, "frank"))
    replies = [await api("POST", LOGIN, auth=None, body=wrong) for _ in range(100)]
    assert all(r.code == 429 and r.body["reason"] == "throttled" for r in replies)
    assert all(int(r.headers["Retry-After"]) > 0 for r in replies)
    rows = await _login_rows(api, "frank")
    throttled = [r for r in rows if r["error_type"] == "throttled"]
    assert len(throttled) == 1, throttled
    assert len(rows) - before <= 3
    # Throttled attempts are not failures: the count stays at the free attempts.
    assert mlx_app.users.throttle.failures("frank", "127.0.0.1") == mlx_app.users.throttle.free_attempts


@pytest.fixture
def parallel(http_server_client):
    """Let the test client really send many requests at once (tornado's default is 10)."""
    http_server_client.max_clients = 200


async def test_parallel_wrong_passwords_cannot_pass_the_throttle(api, make_user, mlx_app, parallel):
    await make_user("grace", password="the right password")
    free = mlx_app.users.throttle.free_attempts
    wrong = {"username": "grace", "password": "wrong password"}
    replies = await asyncio.gather(*(api("POST", LOGIN, auth=None, body=wrong) for _ in range(20)))
    codes = sorted(r.code for r in replies)
    # All 20 are refused; only the free attempts reached the password hash.
    assert codes == [401] * free + [429] * (20 - free), codes
    assert all(r.body["reason"] == "throttled" for r in replies if r.code == 429)
    rows = await _login_rows(api, "grace")
    assert sum(r["error_type"] == "invalid_credentials" for r in rows) == free
    assert sum(r["error_type"] == "throttled" for r in rows) == 1
    assert mlx_app.users.throttle.failures("grace", "127.0.0.1") == free
    # After them the throttle refuses, even the right password, without hashing it.
    reply = await api("POST", LOGIN, auth=None, body={"username": "grace", "password": "the right password"})
    assert reply.code == 429 and int(reply.headers["Retry-After"]) > 0


async def test_parallel_wrong_passwords_at_the_service_count_as_failures(mlx_app):
    """The same, without HTTP in between: 20 coroutines started in one go."""
    from jupyter_mlx_manager.errors import TooManyRequests, Unauthorized

    users = mlx_app.users
    free = users.throttle.free_attempts
    results = await asyncio.gather(
        *(users.login("ivan", "wrong password", "198.51.100.9") for _ in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, Unauthorized) for r in results) == free
    assert sum(isinstance(r, TooManyRequests) and r.reason == "throttled" for r in results) == 20 - free
    assert users.throttle.failures("ivan", "198.51.100.9") == free


async def test_registration_flood_gets_429s_and_logins_still_succeed(api, make_user, mlx_app, parallel):
    await make_user("heidi", password="the right password")
    users = mlx_app.users
    users.registrations.limit = 0  # the flood here is about the hashing budget, not the address limit
    budget = users.register_budget
    capacity = budget.workers + budget.max_waiting
    flood_size = capacity + 30

    started = time.monotonic()
    flood = asyncio.gather(
        *(
            api("POST", REGISTER, auth=None, body={"username": f"flood{i}", "password": PASSWORD})
            for i in range(flood_size)
        )
    )
    await asyncio.sleep(0.3)  # let the flood fill the queue
    login_started = time.monotonic()
    login = await api("POST", LOGIN, auth=None, body={"username": "heidi", "password": "the right password"})
    login_seconds = time.monotonic() - login_started
    replies = await flood
    assert login.code == 200, login.body
    codes = [r.code for r in replies]
    assert set(codes) <= {201, 429}, codes
    busy = [r for r in replies if r.code == 429]
    assert busy and all(r.body["reason"] == "auth_busy" for r in busy)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in busy)
    assert codes.count(201) <= capacity
    assert codes.count(201) >= 1
    # The login did not queue behind the registrations' hashes.
    flood_seconds = time.monotonic() - started
    assert login_seconds < max(5.0, flood_seconds / 2), (login_seconds, flood_seconds)
    assert budget.pending == 0 and users.login_budget.pending == 0


# -- the pieces, without a server -----------------------------------------------------------


def test_rate_limiter_counts_per_key_releases_and_bounds_memory():
    limiter = RateLimiter(limit=3, window=60, max_keys=100)
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    wait = limiter.acquire("a")
    assert 55 <= wait <= 60
    assert limiter.acquire("b") == 0
    limiter.release("a")
    assert limiter.acquire("a") == 0
    for i in range(1000):
        limiter.acquire(f"spray{i}")
    assert len(limiter) <= 100
    assert RateLimiter(limit=0).acquire("x") == 0  # 0: unlimited


def test_login_throttle_reserves_synchronously_and_reports_once_per_period():
    throttle = LoginThrottle(free_attempts=3, base_delay=30, max_keys=50)
    assert [throttle.begin("u", "ip") for _ in range(3)] == [0, 0, 0]
    assert throttle.failures("U", "ip") == 3  # in-flight attempts already count
    assert 29 <= throttle.begin("u", "ip") <= 30
    assert throttle.failures("u", "ip") == 3  # a refusal is not counted
    assert throttle.report_refusal("u", "ip") is True
    assert not any(throttle.report_refusal("u", "ip") for _ in range(50))
    throttle.cancel("u", "ip")  # one attempt never reached the password check
    assert throttle.begin("u", "ip") == 0
    throttle.succeeded("u", "ip")
    assert throttle.failures("u", "ip") == 0 and throttle.begin("u", "other") == 0
    for i in range(500):
        throttle.begin(f"name{i}", "spray")
    assert len(throttle) <= 50


async def test_hash_budget_refuses_beyond_its_queue():
    from jupyter_mlx_manager.errors import TooManyRequests

    budget = HashBudget("test", workers=1, max_waiting=2)
    release = threading.Event()

    def slow():
        release.wait(10)
        return "done"

    jobs = [asyncio.ensure_future(budget.run(slow)) for _ in range(3)]
    await asyncio.sleep(0)
    assert budget.pending == 3
    with pytest.raises(TooManyRequests) as refused:
        await budget.run(slow)
    assert refused.value.reason == "auth_busy" and int(refused.value.headers["Retry-After"]) >= 1
    release.set()
    assert await asyncio.gather(*jobs) == ["done"] * 3
    assert budget.pending == 0
    # A reserved place that is never used is given back.
    with budget.reserve():
        assert budget.pending == 1
    assert budget.pending == 0
