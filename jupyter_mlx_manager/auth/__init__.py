"""Identity: users, passwords, JWTs (access tokens, API tokens, tickets) and login throttling."""

from .jwt_tokens import InvalidToken, TokenIssuer, looks_like_jwt, resolve_secret
from .passwords import HashBudget
from .throttle import LoginThrottle, RateLimiter
from .users import Actor, UserService, is_admin, username_of

__all__ = [
    "Actor",
    "HashBudget",
    "InvalidToken",
    "LoginThrottle",
    "RateLimiter",
    "TokenIssuer",
    "UserService",
    "is_admin",
    "looks_like_jwt",
    "resolve_secret",
    "username_of",
]
