"""Identity: users, passwords, JWTs (access tokens, API tokens, tickets) and login throttling."""

from .jwt_tokens import InvalidToken, TokenIssuer, looks_like_jwt, resolve_secret
from .users import Actor, UserService

__all__ = ["Actor", "InvalidToken", "TokenIssuer", "UserService", "looks_like_jwt", "resolve_secret"]
