"""`mlx/api/profiles[/{name}]`: model profiles (a model, or models in order, and its defaults)
and the aliases that map client names to them. Everyone reads them; admins write them."""

from __future__ import annotations

from ..errors import Forbidden, NotFound
from .base import MLXAPIHandler, authorized, web


class ProfilesHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        profiles = self.services.profiles
        self.write_json(
            {"profiles": [{"name": n, **p} for n, p in sorted(profiles.table().items())], "aliases": profiles.aliases}
        )


class ProfileHandler(MLXAPIHandler):
    def _admin(self) -> None:
        if not self.mlx_user["is_admin"]:
            raise Forbidden("only administrators can change profiles", reason="admin_required")

    @web.authenticated
    @authorized
    async def get(self, name: str):
        profile = {k.lower(): (k, v) for k, v in self.services.profiles.table().items()}.get(name.lower())
        if profile is None:
            raise NotFound(f"no profile {name!r}", reason="not_found")
        self.write_json({"name": profile[0], **profile[1]})

    @web.authenticated
    @authorized
    async def put(self, name: str):
        self._admin()
        profile = await self.services.profiles.put(name, self.json_body())
        await self.services.audit.record(
            "profile.update", user=self.mlx_user["username"], client=self.actor.client, detail=name
        )
        self.write_json(profile)

    @web.authenticated
    @authorized
    async def delete(self, name: str):
        self._admin()
        await self.services.profiles.delete(name)
        await self.services.audit.record(
            "profile.delete", user=self.mlx_user["username"], client=self.actor.client, detail=name
        )
        self.write_json({"name": name, "deleted": True})
