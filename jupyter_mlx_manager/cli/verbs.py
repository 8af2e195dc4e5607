"""Ollama's verbs — `list`, `ps`, `pull`, `load`, `unload`, `rm`, `run` — against a running
server: the one a kernel's `connect()` would find (`JUPYTER_MLX_MANAGER_URL`, the running
Jupyter servers of this user, a JupyterHub environment), or `--url` / `--token`."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..client.results import DEMO_LABEL

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def keep_alive(text: str) -> float:
    """`300`, `30s`, `5m`, `2h`, `1d`; negative (`-1`) or `forever`: never unloaded."""
    if text.strip().lower() in ("forever", "inf", "never"):
        return -1
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: seconds, or 30s, 5m, 2h, 1d, or -1 for forever")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="the server's base URL, e.g. http://127.0.0.1:8888/ (default: $JUPYTER_MLX_MANAGER_URL, "
        "else the running Jupyter server found as a kernel finds it)",
    )
    parser.add_argument(
        "--token",
        help="an API token or Jupyter token for --url (default: $JUPYTER_MLX_MANAGER_TOKEN; "
        "a found server's own token otherwise)",
    )


def add_parsers(commands: Any, server: argparse.ArgumentParser) -> None:
    commands.add_parser("list", parents=[server], help="list the models on the server's disk (ollama list)")
    commands.add_parser("ps", parents=[server], help="show the loaded models: the pool (ollama ps)")
    pull = commands.add_parser("pull", parents=[server], help="download a model from the Hub, with a progress bar")
    pull.add_argument("repo", metavar="REPO", help="a Hub repo id, e.g. mlx-community/SmolLM2-135M-Instruct-4bit")
    pull.add_argument("--revision", help="a branch, tag or commit (default: main)")
    load = commands.add_parser("load", parents=[server], help="load a model into the pool")
    load.add_argument("model", metavar="MODEL", help="a model id from `list`")
    load.add_argument("--pin", action="store_true", help="never unload or evict it (admins)")
    load.add_argument(
        "--keep-alive",
        type=keep_alive,
        metavar="S",
        help="unload it after S idle: seconds or 30s, 5m, 2h; -1 for never (default: the server's)",
    )
    unload = commands.add_parser("unload", parents=[server], help="unload a model (its runner process stops)")
    unload.add_argument("model", metavar="MODEL", help="a loaded model id from `ps`")
    rm = commands.add_parser("rm", parents=[server], help="delete a model from the server's disk (admins)")
    rm.add_argument("model", metavar="MODEL", help="a model id from `list`")
    rm.add_argument("--force", action="store_true", help="unload it first if it is loaded")
    run = commands.add_parser(
        "run", parents=[server], help="chat with a model in the terminal; interactive without PROMPT"
    )
    run.add_argument("model", metavar="MODEL", help="a text or vision model id from `list` (loaded on first use)")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", help="one prompt to answer (default: read stdin, or ask)")
    run.add_argument("--system", help="a system prompt")
    run.add_argument("--max-tokens", type=int, metavar="N", help="stop each reply after N tokens")
    run.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default: the model's)")
    run.add_argument("--seed", type=int, metavar="N", help="a sampling seed, for the same replies each run")


def run_verb(args: argparse.Namespace) -> int:
    import httpx

    from ..client import MLXClient, MLXManagerError, ServerNotFound, find_server
    from ..client.discovery import ServerInfo

    try:
        found = ServerInfo(args.url, "", "--url") if args.url else find_server()
        token = args.token or (os.environ.get("JUPYTER_MLX_MANAGER_TOKEN") if args.url else None) or found.token
        client = MLXClient(ServerInfo(found.url if found.url.endswith("/") else found.url + "/", token, found.source))
    except ServerNotFound as exc:
        print(f"error: {exc} (or pass --url and --token)", file=sys.stderr)
        return 1
    try:
        return VERBS[args.command](client, args)
    except MLXManagerError as exc:
        print(f"error: {exc.message or exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"error: cannot reach the server at {client.server.url}: {exc}", file=sys.stderr)
        return 1


def print_table(headers: Sequence[str], rows: list[Sequence[str]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _list(client, args: argparse.Namespace) -> int:
    from ..client.results import format_bytes

    rows = []
    for m in client.local_models():
        quant = (m.get("quantization") or {}).get("bits")
        notes = [
            "loaded" if m.get("loaded") else "",
            DEMO_LABEL if m.get("demo") else "",
            "needs an extra" if m.get("unavailable") else "",
        ]
        rows.append([
            m["id"], m.get("kind") or "", format_bytes(m.get("size_bytes") or 0), _count(m.get("parameters")),
            f"{quant}-bit" if quant else "", str(m.get("context_length") or ""), ", ".join(n for n in notes if n),
        ])  # fmt: skip
    print_table(("MODEL", "KIND", "SIZE", "PARAMS", "QUANT", "CONTEXT", "NOTE"), rows, "no local models")
    return 0


def _count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _until(model: dict[str, Any], now: datetime) -> str:
    if model.get("pinned"):
        return "pinned"
    if model.get("status") == "busy":
        return "busy"
    expires = model.get("expires_at")
    if not expires:
        return "forever"
    seconds = (datetime.fromisoformat(expires.replace("Z", "+00:00")) - now).total_seconds()
    if seconds < 90:
        return f"{max(seconds, 0):.0f} seconds from now"
    return f"{seconds / 60:.0f} minutes from now"


def _ps(client, args: argparse.Namespace) -> int:
    from ..client.results import format_bytes

    pool = client.pool()
    now = datetime.now(UTC)
    rows = [
        [m["model"], m.get("kind") or "", format_bytes(m.get("memory_bytes") or 0), str(m.get("pid") or ""),
         str(m.get("requests", "")), _until(m, now)]
        for m in pool.models
    ]  # fmt: skip
    print_table(("MODEL", "KIND", "MEMORY", "PID", "REQUESTS", "UNTIL"), rows, "no model loaded")
    limits = pool.get("limits") or {}
    budget = limits.get("max_memory_bytes")
    used = format_bytes(pool.get("memory_used_bytes") or 0)
    print(f"\nmemory {used}" + (f" of {format_bytes(budget)}" if budget else ""), end="")
    print(f" · at most {limits['max_loaded_models']} models" if limits.get("max_loaded_models") else "")
    return 0


def _pull(client, args: argparse.Namespace) -> int:
    from ..client import MLXManagerError

    download = client.download(args.repo, wait=False, revision=args.revision)
    try:
        record = download.wait()
    except KeyboardInterrupt:
        download.close()
        print(
            f"\nstopped following; the download goes on on the server (`jupyter mlx-manager pull {args.repo}` "
            "follows it again)",
            file=sys.stderr,
        )
        return 130
    except MLXManagerError as exc:
        record = download.progress
        reason = record.get("error") or exc.message
        print(f"error: downloading {args.repo} {record.get('status') or 'failed'}: {reason}", file=sys.stderr)
        return 1
    print(f"{record['repo_id']} is local: `jupyter mlx-manager run {record['repo_id']}` to try it")
    return 0


def _load(client, args: argparse.Namespace) -> int:
    from ..client.results import format_bytes

    started = time.monotonic()
    model = client.load(args.model, pin=args.pin, keep_alive=args.keep_alive)
    took = time.monotonic() - started
    print(f"{model['model']} {model['status']} in {took:.1f} s · {format_bytes(model.get('memory_bytes') or 0)}")
    return 0


def _unload(client, args: argparse.Namespace) -> int:
    client.unload(args.model)
    print(f"unloaded {args.model}")
    return 0


def _rm(client, args: argparse.Namespace) -> int:
    from ..client.results import format_bytes

    result = client.delete_model(args.model, force=args.force)
    print(f"deleted {result['id']} ({format_bytes(result.get('freed_bytes') or 0)} freed)")
    return 0


def _run(client, args: argparse.Namespace) -> int:
    local = {m["id"].lower(): m for m in client.local_models()}
    model = local.get(args.model.lower())
    if model is not None and model.get("demo"):
        print(f"{model['id']} is a demo model ({DEMO_LABEL}): its replies are noise.", file=sys.stderr)
    chosen = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    params = {k: v for k, v in chosen.items() if v is not None}
    history = [{"role": "system", "content": args.system}] if args.system else []
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()  # `echo hi | jupyter mlx-manager run MODEL`
    if prompt is not None:
        _reply(client, args.model, [*history, {"role": "user", "content": prompt}], params, sys.stdout.write)
        return 0
    return _interactive(client, args.model, history, params)


def _interactive(client, model: str, history: list[dict[str, Any]], params: dict[str, Any]) -> int:
    print("Chat with " + model + ": /clear forgets the conversation, /bye (or Ctrl-D) ends it, Ctrl-C stops a reply.")
    system = list(history)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        if line.strip() in ("/bye", "/exit", "/quit"):
            return 0
        if line.strip() == "/clear":
            history = list(system)
            print("(conversation cleared)")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = _reply(client, model, history, params, sys.stdout.write)
        except KeyboardInterrupt:
            print("\n(stopped)")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def _reply(client, model: str, messages: list[dict[str, Any]], params: dict[str, Any], write: Callable) -> str:
    """Stream one reply to the terminal (reasoning dimmed on a terminal); returns its content."""
    dim, plain = ("\x1b[2m", "\x1b[0m") if sys.stdout.isatty() else ("", "")
    content, reasoning = [], False
    deltas = client.chat_deltas(model, messages, **params)
    try:
        for delta in deltas:
            if delta.get("reasoning_content"):
                write((dim if not reasoning else "") + delta["reasoning_content"])
                reasoning = True
            if delta.get("content"):
                if reasoning:
                    write(plain + "\n\n")
                    reasoning = False
                write(delta["content"])
                content.append(delta["content"])
            sys.stdout.flush()
    finally:
        deltas.close()  # Ctrl-C: the request ends, the server stops generating
        write((plain if reasoning else "") + "\n")
        sys.stdout.flush()
    return "".join(content)


VERBS = {"list": _list, "ps": _ps, "pull": _pull, "load": _load, "unload": _unload, "rm": _rm, "run": _run}
