"""`mlx/api/auth/…`: register, login, me, API tokens and tickets."""

from __future__ import annotations

from .base import MLXAPIHandler, allow_unauthenticated, authorized, web


class RegisterHandler(MLXAPIHandler):
    @allow_unauthenticated
    async def post(self):
        body = self.json_body()
        user = await self.services.users.register(
            body.get("username"), body.get("password"), address=self.request.remote_ip or ""
        )
        self.write_json(user, status=201)


class LoginHandler(MLXAPIHandler):
    @allow_unauthenticated
    async def post(self):
        body = self.json_body()
        reply = await self.services.users.login(
            body.get("username"), body.get("password"), self.request.remote_ip or ""
        )
        self.write_json(reply)


class MeHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.write_json({**self.mlx_user, "client": self.actor.client})


class TokensHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.write_json({"tokens": await self.services.users.list_api_tokens(self.mlx_user)})

    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        token = await self.services.users.create_api_token(self.actor, body.get("name"), body.get("expires_in_days"))
        self.write_json(token, status=201)


class TokenHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def delete(self, token_id: str):
        await self.services.users.revoke_api_token(self.actor, int(token_id))
        self.set_status(204)
        self.finish()


class TicketHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def post(self):
        self.write_json(self.services.users.issue_ticket(self.mlx_user), status=201)
