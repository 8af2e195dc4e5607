"""`jupyter mlx-manager …`: models (Ollama's verbs, against a running server), users and
tokens (on this machine's database), demo models, and `serve`.

`list`, `ps`, `pull`, `load`, `unload`, `rm` and `run` talk to the server a kernel's
`connect()` finds (or `--url`/`--token`); `users` and `token` read the same configuration
files as the server (`c.MLXManager.data_dir`, `jwt_secret`) and work on its database, so
their changes take effect on the server's next request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .._version import __version__
from ..models.kinds import KINDS
from . import service
from .admin import demo_model, users_and_tokens
from .verbs import add_parsers, add_server_options, run_verb

# The identities `serve` offers, as the command line spells them → MLXServe.identity.
IDENTITIES = {"auto": "auto", "standalone": "standalone", "hub": "jupyterhub", "jupyterhub": "jupyterhub"}


def _identity(value: str) -> str:
    if value not in IDENTITIES:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, standalone, hub")
    return IDENTITIES[value]


def _serve(args: argparse.Namespace, traitlets_args: list[str]) -> int:
    """`serve`: options as traitlets (`--MLXManager.model_dirs=…` and the like pass through)."""
    options = [f"--MLXServe.{name}={value}" for name in ("ip", "port", "identity") if (value := getattr(args, name))]
    if args.data_dir:
        options.append(f"--MLXManager.data_dir={args.data_dir}")
    try:
        if args.uninstall_service:
            service.uninstall()
            return 0
        if args.install_service:
            service.install([*options, *traitlets_args])
            return 0
    except service.UnsupportedPlatform as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from ..serve import main as serve_main

    return serve_main([*options, *traitlets_args])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="jupyter mlx-manager", description="Models, users, tokens and the model service of jupyter-mlx-manager."
    )
    top.add_argument("--version", action="version", version=f"jupyter-mlx-manager {__version__}")
    top.add_argument("--data-dir", help="the server's data folder (default: c.MLXManager.data_dir)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = argparse.ArgumentParser(add_help=False)
    add_server_options(server)
    add_parsers(commands, server)

    users = commands.add_parser("users", help="list, approve or disable users")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list every user")
    for action in ("approve", "disable"):
        actions.add_parser(action, help=f"{action} a user").add_argument("name", metavar="NAME", help="a username")

    token = commands.add_parser("token", help="API tokens")
    token_actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_actions.add_parser("create", help="create an API token for a user and print it")
    create.add_argument("--user", required=True, help="the user the token acts as")
    create.add_argument("--name", default="cli", help="a name to recognise the token by (default: cli)")
    create.add_argument(
        "--expires-in-days", type=float, default=None, help="its lifetime in days (default: the server's maximum)"
    )

    demo = commands.add_parser(
        "demo-model",
        help="create a tiny random-weight model (offline), id local/<name>: a stand-in whose replies are noise",
    )
    demo.add_argument("--dir", help="models folder to create it in (default: <data_dir>/models, always served)")
    demo.add_argument("--name", help="its folder name (default: tiny-<kind>, tiny-demo for text)")
    demo.add_argument("--kind", choices=KINDS, default="text", help="the kind of model (default: text)")
    demo.add_argument(
        "--all-kinds", action="store_true", help="one demo model of every kind whose extra is installed (tiny-<kind>)"
    )
    demo.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if any local model exists (with --all-kinds: skip the kinds that have one)",
    )
    demo.add_argument(
        "--tool-calling", action="store_true", help="a model that always calls the get_weather tool (to try tools)"
    )
    demo.add_argument(
        "--reasoning", action="store_true", help="a thinking model whose replies open with a <think>...</think> block"
    )
    demo.add_argument(
        "--size",
        choices=["tiny", "small", "bench"],
        default="tiny",
        help="text models: tiny (tests), small (demos) or bench (a decode step of ~5-20 ms on one CPU core, "
        "for benchmarks/serve_bench.py); default: tiny",
    )
    demo.add_argument(
        "--context",
        type=int,
        default=2048,
        help="text models: the context length in tokens written into its config (default 2048); agents need "
        "room for their prompts: Claude Code ~55k, opencode ~22k, Codex ~18k",
    )

    serve = commands.add_parser(
        "serve",
        help="run the backend (pool, runners, downloads, audit, mlx/api and mlx/v1) as a standalone server, "
        "or as a JupyterHub service; also takes --MLXManager.<trait>=<value>",
    )
    serve.add_argument("--ip", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8890)")
    serve.add_argument(
        "--identity",
        type=_identity,
        metavar="{auto,standalone,hub}",
        help="who may sign in: standalone (this server's accounts and tokens), hub (a JupyterHub service: "
        "Hub users and tokens), auto (hub when JupyterHub started it; the default)",
    )
    installing = serve.add_mutually_exclusive_group()
    installing.add_argument(
        "--install-service",
        action="store_true",
        help="instead of serving now, write (and print) a systemd user unit (Linux) or launchd agent (macOS) "
        "that runs `serve` with these options at login",
    )
    installing.add_argument("--uninstall-service", action="store_true", help="remove that unit or agent")
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if args.command == "serve":
        return _serve(args, extra)
    if extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo-model":
        return demo_model(args)
    if args.command in ("users", "token"):
        return asyncio.run(users_and_tokens(args))
    return run_verb(args)
