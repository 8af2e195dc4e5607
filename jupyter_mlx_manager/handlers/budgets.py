"""`mlx/api/budgets`: token budgets. Admins see and set everyone's; users see their own, with
what is left in each window."""

from __future__ import annotations

from ..budgets import check_budgets
from ..errors import Forbidden
from .base import MLXAPIHandler, authorized, web


class BudgetsHandler(MLXAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        budgets, user = self.services.budgets, self.mlx_user
        own = await budgets.status(user["username"], self.actor.groups)
        if not user["is_admin"]:
            self.write_json(own)
            return
        accounts = await self.services.users.list_users()
        everyone = [await budgets.status(a["username"]) for a in accounts if a["status"] == "approved"]
        self.write_json({**own, "budgets": budgets.table(), "users": everyone})

    @web.authenticated
    @authorized
    async def put(self):
        if not self.mlx_user["is_admin"]:
            raise Forbidden("only administrators can set budgets", reason="admin_required")
        table = await self.services.budgets.update(check_budgets(self.json_body()))
        await self.services.audit.record(
            "budgets.update", user=self.mlx_user["username"], client=self.actor.client, detail="budgets changed"
        )
        self.write_json({"budgets": table})
