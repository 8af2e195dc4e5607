"""`mlx/api/users…`: administrators list, approve, disable, promote and delete users."""

from __future__ import annotations

from .base import MLXAPIHandler, authorized, web


class UsersHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.require_admin()
        self.write_json({"users": await self.services.users.list_users()})


class UserHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def patch(self, user_id: str):
        actor = self.require_admin()
        body = self.json_body()
        unknown = set(body) - {"status", "is_admin"}
        if unknown:
            raise web.HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}", reason="unknown_fields")
        user = await self.services.users.update_user(actor, int(user_id), body.get("status"), body.get("is_admin"))
        self.write_json(user)

    @web.authenticated
    @authorized
    async def delete(self, user_id: str):
        await self.services.users.delete_user(self.require_admin(), int(user_id))
        self.set_status(204)
        self.finish()
