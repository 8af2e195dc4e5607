"""Users, API tokens and tickets: the plain Python API behind the auth handlers and the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..audit import AuditLog
from ..errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized
from ..storage import Database, utcnow
from .jwt_tokens import MAX_TICKET_SECONDS, Claims, InvalidToken, TokenIssuer
from .passwords import LOGIN_BUDGET, REGISTER_BUDGET, HashBudget, hash_password_sync, verify_password_sync
from .throttle import LoginThrottle, RateLimiter

USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
STATUSES = ("pending", "approved", "disabled")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_BYTES = 1024
MAX_TOKEN_NAME = 100
DEFAULT_API_TOKEN_DAYS = 365
MAX_API_TOKEN_DAYS = 3650
USER_COLUMNS = "id, username, status, is_admin, created_at"


@dataclass(frozen=True)
class Actor:
    """Who is making a request: the user plus how they came in (for the audit trail)."""

    user: dict[str, Any]
    client: str  # "browser", "kernel" or "api_token"
    # Extra audit fields that say where the request came from (e.g. the notebook of a kernel).
    context: dict[str, Any] = field(default_factory=dict)
    # The identity provider's groups (JupyterHub's), for budgets; None where this request does not
    # say (our own tokens): the budgets then use the groups last seen for the user.
    groups: tuple[str, ...] | None = None


# Services take `user`: our user dict (keys "username", "is_admin", …) or None, the server
# itself (expiry, eviction, resumed work), which may do what an admin may.
def is_admin(user: dict[str, Any] | None) -> bool:
    return user is None or bool(user.get("is_admin"))


def username_of(user: dict[str, Any] | None) -> str | None:
    return None if user is None else user.get("username")


def validate_username(username: Any) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadRequest(
            "username must be 1-64 ASCII letters, digits or . _ @ + - and start with a letter or digit",
            reason="invalid_username",
        )
    return username


def validate_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(
            f"password must be a string of at least {MIN_PASSWORD_LENGTH} characters", reason="invalid_password"
        )
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"password must be at most {MAX_PASSWORD_BYTES} bytes", reason="invalid_password")
    return password


def _user(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    user = {key: row[key] for key in ("id", "username", "status", "is_admin", "created_at")}
    user["is_admin"] = bool(user["is_admin"])
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _insert_user(conn, username: str, password_hash: str | None) -> dict[str, Any]:
    """One statement decides first-user-becomes-admin, so concurrent inserts cannot both win."""
    try:
        conn.execute(
            "INSERT INTO users (username, password_hash, status, is_admin, created_at) "
            "SELECT ?, ?, CASE WHEN EXISTS (SELECT 1 FROM users) THEN 'pending' ELSE 'approved' END, "
            "NOT EXISTS (SELECT 1 FROM users), ?",
            (username, password_hash, utcnow()),
        )
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"user {username!r} already exists", reason="user_exists") from exc
    return _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone())


class UserService:
    def __init__(
        self,
        db: Database,
        issuer: TokenIssuer,
        audit: AuditLog,
        access_token_hours: float = 24,
        allow_registration: bool = True,
        throttle: LoginThrottle | None = None,
        registration_limit: int = 5,
        registration_window: float = 600,
        login_budget: HashBudget | None = None,
        register_budget: HashBudget | None = None,
    ):
        self.db = db
        self.issuer = issuer
        self.audit = audit
        self.access_token_hours = access_token_hours
        self.allow_registration = allow_registration
        self.throttle = throttle or LoginThrottle()
        # Registrations per client address (`registration_limit` ≤ 0: unlimited).
        self.registrations = RateLimiter(registration_limit, registration_window)
        # Bounded argon2 queues; separate, so a registration flood cannot starve logins.
        self.login_budget = login_budget or LOGIN_BUDGET
        self.register_budget = register_budget or REGISTER_BUDGET
        # Called with a user id after an admin changed or deleted that user (live sockets re-check).
        self.change_listeners: list[Callable[[int], None]] = []

    # -- accounts ---------------------------------------------------------------------------
    def ensure_owner_sync(self, username: str) -> dict[str, Any]:
        """At startup: the owner account exists, and is created as an approved admin."""
        validate_username(username)

        def run(conn):
            row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
            if row is not None:
                return _user(row)
            conn.execute(
                "INSERT INTO users (username, password_hash, status, is_admin, created_at) VALUES (?, NULL, 'approved', 1, ?)",
                (username, utcnow()),
            )
            return _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone())

        return self.db.write_sync(run)

    async def register(
        self, username: Any, password: Any, client: str = "api", address: str | None = None
    ) -> dict[str, Any]:
        """`address`: the client address of an HTTP registration, rate-limited per address
        (None: an in-process caller such as the CLI, not limited by address)."""
        if not self.allow_registration:
            raise Forbidden("registration is disabled on this server", reason="registration_disabled")
        username = validate_username(username)
        validate_password(password)
        # Every refusal below is taken synchronously, before any hash is queued.
        if address is not None:
            wait = self.registrations.acquire(address)
            if wait:
                raise TooManyRequests(
                    f"too many registrations from your address; try again in {wait} s",
                    reason="registration_throttled",
                    headers={"Retry-After": str(wait)},
                )
        try:
            slot = self.register_budget.reserve()
        except TooManyRequests:
            if address is not None:
                self.registrations.release(address)  # not this client's doing: do not count it
            raise
        with slot:
            if await self.get_by_name(username) is not None:  # refused without a hash
                raise Conflict(f"user {username!r} already exists", reason="user_exists")
            password_hash = await slot.run(hash_password_sync, password)
        user = await self.db.write(_insert_user, username, password_hash)
        await self.audit.record("auth.register", user=username, client=client, detail=user["status"])
        return user

    async def user_for_jupyter_name(self, name: str) -> dict[str, Any]:
        """The account of a user the identity provider named; created pending unless first."""
        user = await self.get_by_name(name)
        if user is not None:
            return user
        validate_username(name)

        def run(conn):
            row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (name,)).fetchone()
            return _user(row) if row is not None else _insert_user(conn, name, None)

        user = await self.db.write(run)
        await self.audit.record("auth.register", user=name, client="browser", detail=user["status"])
        return user

    async def get(self, user_id: int) -> dict[str, Any] | None:
        return await self.db.read(
            lambda conn: _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone())
        )

    async def get_by_name(self, username: str) -> dict[str, Any] | None:
        return await self.db.read(
            lambda conn: _user(
                conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
            )
        )

    async def list_users(self) -> list[dict[str, Any]]:
        return await self.db.read(
            lambda conn: [_user(r) for r in conn.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY id")]
        )

    @staticmethod
    def require_active(user: dict[str, Any] | None) -> dict[str, Any]:
        """Pending and disabled users are refused on every request, whatever their credential."""
        if user is None:
            raise Unauthorized("the account behind this credential no longer exists", reason="unknown_user")
        if user["status"] == "pending":
            raise Forbidden("your account is waiting for an administrator's approval", reason="pending")
        if user["status"] == "disabled":
            raise Forbidden("your account has been disabled", reason="disabled")
        return user

    async def update_user(self, actor: Actor, user_id: int, status: Any = None, is_admin: Any = None) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}", reason="invalid_status")
        if is_admin is not None and not isinstance(is_admin, bool):
            raise BadRequest("is_admin must be true or false", reason="invalid_is_admin")
        if status is None and is_admin is None:
            raise BadRequest("give status and/or is_admin", reason="nothing_to_change")

        def run(conn):
            before = _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone())
            if before is None:
                raise NotFound(f"no user with id {user_id}")
            conn.execute(
                "UPDATE users SET status = COALESCE(?, status), is_admin = COALESCE(?, is_admin) WHERE id = ?",
                (status, None if is_admin is None else int(is_admin), user_id),
            )
            _keep_an_admin(conn)
            return before, _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone())

        before, after = await self.db.write(run)
        self._changed(user_id)
        for action, changed in (
            (
                {"approved": "user.approve", "disabled": "user.disable", "pending": "user.set_pending"}.get(
                    after["status"]
                ),
                before["status"] != after["status"],
            ),
            ("user.promote" if after["is_admin"] else "user.demote", before["is_admin"] != after["is_admin"]),
        ):
            if changed:
                await self.audit.record(
                    action, user=actor.user["username"], client=actor.client, detail=after["username"]
                )
        return after

    async def delete_user(self, actor: Actor, user_id: int) -> None:
        def run(conn):
            row = _user(conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone())
            if row is None:
                raise NotFound(f"no user with id {user_id}")
            conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
            # Stored Responses are keyed by name: a later account of that name must not see them.
            conn.execute("DELETE FROM responses WHERE user = ?", (row["username"],))
            _keep_an_admin(conn)
            return row

        deleted = await self.db.write(run)
        self._changed(user_id)
        await self.audit.record(
            "user.delete", user=actor.user["username"], client=actor.client, detail=deleted["username"]
        )

    def _changed(self, user_id: int) -> None:
        for listener in self.change_listeners:
            listener(user_id)

    # -- login and tokens -------------------------------------------------------------------
    async def login(self, username: Any, password: Any, client_address: str) -> dict[str, Any]:
        if (
            not isinstance(username, str)
            or not isinstance(password, str)
            or len(password.encode()) > MAX_PASSWORD_BYTES
        ):
            raise BadRequest("username and password must be strings", reason="invalid_credentials_format")
        if not USERNAME_RE.fullmatch(username):  # no account can have it: no hashing, no record
            raise Unauthorized("wrong username or password", reason="invalid_credentials")
        # The attempt is counted synchronously, before anything is awaited, so parallel
        # guesses cannot all pass the check before the first of them fails.
        wait = self.throttle.begin(username, client_address)
        if wait:
            # No hash, and one audit row per throttle period, not one per attempt.
            if self.throttle.report_refusal(username, client_address):
                await self.audit.record(
                    "auth.login", status="error", user=username[:64], client="api", error_type="throttled"
                )
            raise TooManyRequests(
                f"too many failed logins; try again in {wait} s", reason="throttled", headers={"Retry-After": str(wait)}
            )
        try:
            slot = self.login_budget.reserve()
        except TooManyRequests:
            self.throttle.cancel(username, client_address)  # no password was checked
            raise
        with slot:
            try:
                row = await self.db.read(
                    lambda conn: conn.execute(
                        f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = ?", (username,)
                    ).fetchone()
                )
            except BaseException:
                self.throttle.cancel(username, client_address)
                raise
            verified = await slot.run(verify_password_sync, row["password_hash"] if row else None, password)
        if not verified:  # already counted as a failure by `begin`
            await self.audit.record(
                "auth.login", status="error", user=username[:64], client="api", error_type="invalid_credentials"
            )
            raise Unauthorized("wrong username or password", reason="invalid_credentials")
        self.throttle.succeeded(username, client_address)
        user = _user(row)
        try:
            self.require_active(user)
        except Forbidden as exc:
            await self.audit.record(
                "auth.login", status="error", user=user["username"], client="api", error_type=exc.reason
            )
            raise
        lifetime = self.access_token_hours * 3600
        token = self.issuer.issue(user["id"], "access", lifetime)
        await self.audit.record("auth.login", user=user["username"], client="api")
        return {"access_token": token, "token_type": "bearer", "expires_in": int(lifetime), "user": user}

    async def user_for_token(self, token: str) -> tuple[dict[str, Any] | None, Claims]:
        """Decode one of our JWTs; API tokens must also be live in the database."""
        claims = self.issuer.decode(token)
        if claims.kind == "api":
            row = await self.db.read(
                lambda conn: conn.execute(
                    "SELECT user_id, token_hash, expires_at FROM api_tokens WHERE id = ?", (claims.token_id,)
                ).fetchone()
            )
            if (
                row is None
                or row["user_id"] != claims.user_id
                or not hmac.compare_digest(row["token_hash"], _token_hash(token))
                or row["expires_at"] <= utcnow()
            ):
                raise InvalidToken("API token revoked or unknown")
        return await self.get(claims.user_id), claims

    def issue_ticket(self, user: dict[str, Any], lifetime: int = 60) -> dict[str, Any]:
        lifetime = min(lifetime, MAX_TICKET_SECONDS)
        return {"token": self.issuer.issue(user["id"], "ticket", lifetime), "expires_in": lifetime}

    async def create_api_token(self, actor: Actor, name: Any, expires_in_days: Any = None) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_TOKEN_NAME:
            raise BadRequest(
                f"name must be a non-empty string of at most {MAX_TOKEN_NAME} characters", reason="invalid_name"
            )
        if expires_in_days is None:
            expires_in_days = DEFAULT_API_TOKEN_DAYS
        if (
            isinstance(expires_in_days, bool)
            or not isinstance(expires_in_days, (int, float))
            or not 0 < expires_in_days <= MAX_API_TOKEN_DAYS
        ):
            raise BadRequest(f"expires_in_days must be a number in (0, {MAX_API_TOKEN_DAYS}]", reason="invalid_expiry")
        lifetime = float(expires_in_days) * 86400
        created = dt.datetime.now(dt.UTC)
        expires_at = (
            (created + dt.timedelta(seconds=int(lifetime))).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        user_id = actor.user["id"]

        def run(conn):
            cursor = conn.execute(
                "INSERT INTO api_tokens (user_id, name, token_hash, created_at, expires_at) VALUES (?, ?, '', ?, ?)",
                (user_id, name.strip(), utcnow(), expires_at),
            )
            token = self.issuer.issue(user_id, "api", lifetime, token_id=cursor.lastrowid)
            conn.execute("UPDATE api_tokens SET token_hash = ? WHERE id = ?", (_token_hash(token), cursor.lastrowid))
            row = conn.execute(
                "SELECT id, name, created_at, expires_at FROM api_tokens WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
            return {**dict(row), "token": token}

        created_token = await self.db.write(run)
        await self.audit.record(
            "token.create", user=actor.user["username"], client=actor.client, detail=created_token["name"]
        )
        return created_token

    async def list_api_tokens(self, user: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.db.read(
            lambda conn: [
                dict(r)
                for r in conn.execute(
                    "SELECT id, name, created_at, expires_at FROM api_tokens WHERE user_id = ? ORDER BY id",
                    (user["id"],),
                )
            ]
        )

    async def revoke_api_token(self, actor: Actor, token_id: int) -> None:
        def run(conn):
            row = conn.execute(
                "SELECT name FROM api_tokens WHERE id = ? AND user_id = ?", (token_id, actor.user["id"])
            ).fetchone()
            if row is None:
                raise NotFound(f"you have no API token with id {token_id}")
            conn.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,))
            return row["name"]

        name = await self.db.write(run)
        self._changed(actor.user["id"])
        await self.audit.record("token.revoke", user=actor.user["username"], client=actor.client, detail=name)


def _keep_an_admin(conn) -> None:
    """Raise (rolling the change back) when no approved admin would be left."""
    if conn.execute("SELECT COUNT(*) FROM users WHERE is_admin = 1 AND status = 'approved'").fetchone()[0] == 0:
        raise Conflict("the last approved admin cannot be removed, disabled or demoted", reason="last_admin")
