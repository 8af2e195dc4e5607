"""The commands that work on this machine's files, not through a server: `users …`,
`token create` (on the server's database, so changes take effect on its next request) and
`demo-model` (random-weight stand-in models, built offline)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import MLXError
from ..server_config import server_config

log = logging.getLogger("jupyter_mlx_manager.cli")


def _services(data_dir: str | None):
    from ..app import MLXManager
    from ..audit import AuditLog
    from ..auth import TokenIssuer, UserService, resolve_secret
    from ..storage import Database

    settings = MLXManager(config=server_config())
    directory = Path(data_dir or settings.data_dir).expanduser()
    db = Database(directory / "mlx_manager.sqlite3", readers=1)
    db.open()
    issuer = TokenIssuer(resolve_secret(settings.jwt_secret, directory, log))
    return db, UserService(db, issuer, AuditLog(db))


def demo_model(args: argparse.Namespace) -> int:
    from ..app import MLXManager
    from ..models.catalog import ModelCatalog
    from ..models.kinds import KIND_REGISTRY, KINDS, missing_extra, with_article

    settings = MLXManager(config=server_config())
    data_dir = Path(args.data_dir or settings.data_dir).expanduser()
    folder = Path(args.dir).expanduser() if args.dir else data_dir / "models"
    if args.tool_calling and args.reasoning:
        print("choose one of --tool-calling and --reasoning", file=sys.stderr)
        return 2
    if (args.all_kinds or args.kind != "text") and (args.tool_calling or args.reasoning):
        print("--tool-calling and --reasoning make text models", file=sys.stderr)
        return 2
    if not 16 <= args.context <= 1_048_576:
        print("--context must be from 16 to 1048576 tokens", file=sys.stderr)
        return 2
    if args.all_kinds and args.name:
        print("--name names one model; --all-kinds makes one of each kind (tiny-<kind>)", file=sys.stderr)
        return 2
    catalog = ModelCatalog([folder, *(Path(d).expanduser() for d in settings.model_dirs)])
    if args.all_kinds:
        kinds = [kind for kind in KINDS if missing_extra(kind) is None]
        for kind in KINDS:
            if kind not in kinds:
                print(f"no {kind} demo model: {missing_extra(kind)}")
    else:
        kinds = [args.kind]
    if args.if_missing:
        present = {info["kind"] for info in catalog.list_local()}
        if not args.all_kinds and present:
            print(f"models already present ({', '.join(catalog.local_ids()[:3])}); not creating the demo model")
            return 0
        for kind in [k for k in kinds if k in present]:
            print(f"{with_article(kind)} model is already present; not creating its demo model".capitalize())
        kinds = [k for k in kinds if k not in present]
    for kind in kinds:
        name = args.name or KIND_REGISTRY[kind].demo_name
        path = _make_demo(kind, folder / name, args)
        print(f"created local/{name} ({kind}, random weights: a stand-in that produces noise) in {path}")
    if kinds and args.dir and folder != data_dir / "models" and str(folder) not in settings.model_dirs:
        print(f"add the folder to the server with: c.MLXManager.model_dirs = [{str(folder)!r}]")
    return 0


def _make_demo(kind: str, path: Path, args: argparse.Namespace) -> Path:
    from ..models import demo

    if kind == "text":
        return demo.make_demo_model(
            path, scripted_tool_call=args.tool_calling, scripted_reasoning=args.reasoning,
            context_length=args.context, **demo.SIZES[args.size],
        )  # fmt: skip
    return getattr(demo, f"make_demo_{kind}_model")(path)


async def users_and_tokens(args: argparse.Namespace) -> int:
    from ..auth import Actor

    db, users = _services(args.data_dir)
    cli_actor = Actor(user={"id": 0, "username": "cli", "is_admin": True}, client="cli")
    try:
        if args.command == "users" and args.action == "list":
            print(f"{'id':>4}  {'username':<24} {'status':<9} {'admin':<5} created")
            for user in await users.list_users():
                admin = "yes" if user["is_admin"] else "no"
                print(f"{user['id']:>4}  {user['username']:<24} {user['status']:<9} {admin:<5} {user['created_at']}")
            return 0
        user = await users.get_by_name(args.name if args.command == "users" else args.user)
        if user is None:
            print(f"no such user: {args.name if args.command == 'users' else args.user}", file=sys.stderr)
            return 1
        if args.command == "users":
            status = {"approve": "approved", "disable": "disabled"}[args.action]
            updated = await users.update_user(cli_actor, user["id"], status=status)
            print(f"{updated['username']} is now {updated['status']}")
            return 0
        token = await users.create_api_token(Actor(user=user, client="cli"), args.name, args.expires_in_days)
        print(token["token"])
        print(f"API token {token['id']} for {user['username']}, expires {token['expires_at']}", file=sys.stderr)
        return 0
    except MLXError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.close()
