"""Identity: users, passwords, JWTs (access tokens, API tokens, tickets) and login throttling."""

from .jwt_tokens import InvalidToken, TokenIssuer, looks_like_jwt, resolve_secret
from .passwords import HashBudget
from .throttle import LoginThrottle, RateLimiter
from .users import Actor, UserService

__all__ = [
    "Actor",
    "HashBudget",
    "InvalidToken",
    "LoginThrottle",
    "RateLimiter",
    "TokenIssuer",
    "UserService",
    "looks_like_jwt",
    "resolve_secret",
]
