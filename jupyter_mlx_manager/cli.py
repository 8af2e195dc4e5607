"""`jupyter mlx-manager …`: manage users and tokens from a shell on the server machine; `serve`.

Reads the same configuration files as the server (`c.MLXManager.data_dir`, `jwt_secret`),
so it works on the running server's database; changes take effect on the next request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from jupyter_core.paths import jupyter_config_path
from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

from .errors import MLXError
from .models.catalog import KINDS

log = logging.getLogger("jupyter_mlx_manager.cli")


def _server_config() -> Config:
    """The server's configuration as `jupyter server` / `jupyter lab` read it: for each config
    directory (lowest priority first), the `.d` folders, then the `.json` and `.py` files of
    `jupyter_server_config` and `jupyter_lab_config`."""
    config = Config()
    for directory in reversed(jupyter_config_path()):
        for base in ("jupyter_server_config", "jupyter_lab_config"):
            drop_in = Path(directory) / f"{base}.d"
            files = [(JSONFileConfigLoader, p.name, str(drop_in)) for p in sorted(drop_in.glob("*.json"))]
            files += [(JSONFileConfigLoader, f"{base}.json", directory), (PyFileConfigLoader, f"{base}.py", directory)]
            for loader, name, path in files:
                try:
                    config.merge(loader(name, path=path).load_config())
                except ConfigFileNotFound:
                    pass
    return config


def _services(data_dir: str | None):
    from .app import MLXManager
    from .audit import AuditLog
    from .auth import TokenIssuer, UserService, resolve_secret
    from .storage import Database

    settings = MLXManager(config=_server_config())
    directory = Path(data_dir or settings.data_dir).expanduser()
    db = Database(directory / "mlx_manager.sqlite3", readers=1)
    db.open()
    issuer = TokenIssuer(resolve_secret(settings.jwt_secret, directory, log))
    return db, UserService(db, issuer, AuditLog(db))


DEMO_NAMES = {
    "text": "tiny-demo", "embedding": "tiny-embedding", "vision": "tiny-vision",
    "transcription": "tiny-transcription", "speech": "tiny-speech",
}  # fmt: skip


def _demo_model(args: argparse.Namespace) -> int:
    from .app import MLXManager
    from .models import demo
    from .models.catalog import ModelCatalog

    settings = MLXManager(config=_server_config())
    data_dir = Path(args.data_dir or settings.data_dir).expanduser()
    folder = Path(args.dir).expanduser() if args.dir else data_dir / "models"
    if args.if_missing:
        existing = ModelCatalog([folder, *(Path(d).expanduser() for d in settings.model_dirs)]).local_ids()
        if existing:
            print(f"models already present ({', '.join(existing[:3])}); not creating the demo model")
            return 0
    if args.tool_calling and args.reasoning:
        print("choose one of --tool-calling and --reasoning", file=sys.stderr)
        return 2
    if args.kind != "text" and (args.tool_calling or args.reasoning):
        print("--tool-calling and --reasoning make text models", file=sys.stderr)
        return 2
    args.name = args.name or DEMO_NAMES.get(args.kind, "tiny-demo")
    if args.kind == "text":
        path = demo.make_demo_model(
            folder / args.name, scripted_tool_call=args.tool_calling, scripted_reasoning=args.reasoning
        )
    else:
        path = getattr(demo, f"make_demo_{args.kind}_model")(folder / args.name)
    print(f"created local/{args.name} in {path}")
    if args.dir and folder != data_dir / "models" and str(folder) not in settings.model_dirs:
        print(f"add it to the server with: c.MLXManager.model_dirs = [{str(folder)!r}]")
    return 0


async def _run(args: argparse.Namespace) -> int:
    from .auth import Actor

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


def _serve(args: argparse.Namespace, traitlets_args: list[str]) -> int:
    """`serve`: options as traitlets (`--MLXManager.model_dirs=…` and the like pass through)."""
    from .serve import main as serve_main

    options = [f"--MLXServe.{name}={value}" for name in ("ip", "port", "identity") if (value := getattr(args, name))]
    if args.data_dir:
        options.append(f"--MLXManager.data_dir={args.data_dir}")
    return serve_main([*options, *traitlets_args])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jupyter mlx-manager", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="database folder (default: c.MLXManager.data_dir)")
    commands = parser.add_subparsers(dest="command", required=True)

    users = commands.add_parser("users", help="list, approve or disable users")
    actions = users.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list every user")
    for action in ("approve", "disable"):
        actions.add_parser(action, help=f"{action} a user").add_argument("name")

    token = commands.add_parser("token", help="API tokens")
    token_actions = token.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="create an API token for a user and print it")
    create.add_argument("--user", required=True)
    create.add_argument("--name", default="cli")
    create.add_argument("--expires-in-days", type=float, default=None)

    demo = commands.add_parser("demo-model", help="create a tiny random-weight model (offline), id local/<name>")
    demo.add_argument("--dir", help="models folder to create it in (default: <data_dir>/models, always served)")
    demo.add_argument("--name", help="its folder name (default: tiny-<kind>, tiny-demo for text)")
    demo.add_argument("--kind", choices=KINDS, default="text", help="the kind of model (default: text)")
    demo.add_argument("--if-missing", action="store_true", help="do nothing if any local model exists")
    demo.add_argument(
        "--tool-calling", action="store_true", help="a model that always calls the get_weather tool (to try tools)"
    )
    demo.add_argument(
        "--reasoning", action="store_true", help="a thinking model whose replies open with a <think>...</think> block"
    )

    serve = commands.add_parser(
        "serve",
        help="run the backend (pool, runners, downloads, audit, mlx/api and mlx/v1) as a standalone server, "
        "or as a JupyterHub service; also takes --MLXManager.<trait>=<value>",
    )
    serve.add_argument("--ip", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8890)")
    serve.add_argument(
        "--identity", choices=("auto", "standalone", "jupyterhub"), help="who may sign in (default: auto)"
    )

    args, extra = parser.parse_known_args(argv)
    if args.command == "serve":
        return _serve(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo-model":
        return _demo_model(args)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
