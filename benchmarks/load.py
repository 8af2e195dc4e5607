"""Load test: N concurrent streaming clients for T seconds against a real server.

Starts a Jupyter server with the extension on a free loopback port (its own temporary
dirs) and a tiny generated model, signs in `--users` accounts, then runs `--clients`
streaming chat clients in a loop until `--seconds` have passed, while a probe times
`GET api/contents` (is the event loop still responsive?). Reports:

* requests by HTTP status, streams that ended without `[DONE]`, 5xx count;
* lost audit records: request ids the clients were answered for that have no audit record;
* server and runner RSS before and after; `api/contents` p50/p99 during the load.

    .venv/bin/python benchmarks/load.py                       # 32 clients, 45 s, tiny model
    .venv/bin/python benchmarks/load.py --clients 64 --seconds 120 --out load.json

Exit status 1 if any 5xx or lost record (the invariants CI asserts); the figures are for
reading, not for asserting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

PASSWORD = "load test password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else None


def start_server(
    root: Path, models: Path, per_user: int, pythonpath: str | None = None
) -> tuple[subprocess.Popen, str, str]:
    """A Jupyter server on `models` (owner `owner`, no warm runner), once it answers;
    `pythonpath`: another jupyter_mlx_manager tree to run instead of this checkout's."""
    port, token = free_port(), "load-" + os.urandom(8).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_MLX_MANAGER", "JPY_", "JUPYTERHUB_"))}
    env.update(JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    log = open(root / "server.log", "wb")  # the server's output, for as long as it runs
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--ServerApp.jpserver_extensions=jupyter_server_terminals=False",
         f"--MLXManager.data_dir={root / 'data'}", f"--MLXManager.model_dirs={models}",
         "--MLXManager.default_keep_alive=-1", "--MLXManager.owner_username=owner",
         "--MLXManager.registration_limit=0", f"--MLXManager.max_requests_per_user={per_user}",
         "--MLXManager.warm_runner=False"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,  # not a checkout: sys.path[0] is the cwd
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited:\n" + (root / "server.log").read_text()[-3000:])
        try:
            if httpx.get(url + "api/status", headers={"Authorization": f"token {token}"}, timeout=2).is_success:
                return process, url, token
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise TimeoutError("the server did not start")


async def sign_in(http: httpx.AsyncClient, admin: dict, users: int) -> list[str]:
    """API tokens: the owner's, then one per extra approved account."""
    tokens = [(await http.post("mlx/api/auth/tokens", json={"name": "load"}, headers=admin)).json()["token"]]
    for i in range(1, users):
        name = f"load{i}"
        user = (await http.post("mlx/api/auth/register", json={"username": name, "password": PASSWORD})).json()
        await http.patch(f"mlx/api/users/{user['id']}", json={"status": "approved"}, headers=admin)
        login = await http.post("mlx/api/auth/login", json={"username": name, "password": PASSWORD})
        tokens.append(login.json()["access_token"])
    return tokens


async def client(http: httpx.AsyncClient, token: str, model: str, eos: int, deadline: float, results: list) -> None:
    rng = random.Random(token[-8:])
    while time.monotonic() < deadline:
        body = {
            "model": model, "messages": [{"role": "user", "content": f"load {rng.random()}"}],
            "max_tokens": rng.randint(16, 64), "temperature": 0.8, "logit_bias": {str(eos): -100},
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        outcome = {"status": None, "request_id": None, "done": False}
        try:
            async with http.stream(
                "POST", "mlx/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
            ) as reply:
                outcome["status"], outcome["request_id"] = reply.status_code, reply.headers.get("X-Request-ID")
                async for line in reply.aiter_lines():
                    if line == "data: [DONE]":
                        outcome["done"] = True
        except httpx.HTTPError as exc:
            outcome["status"] = f"transport: {type(exc).__name__}"
        results.append(outcome)
        if outcome["status"] in (429, 503):
            await asyncio.sleep(0.5)


async def probe(http: httpx.AsyncClient, admin: dict, deadline: float, latencies: list[float]) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        await http.get("api/contents", headers=admin)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.2)


def rss(pid: int | None) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss if pid else None
    except psutil.Error:
        return None


async def run(args: argparse.Namespace, url: str, token: str, server_pid: int, model: str, eos: int) -> dict:
    admin = {"Authorization": f"token {token}"}
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        tokens = await sign_in(http, admin, args.users)
        loaded = (await http.post("mlx/api/pool/load", json={"model": model}, headers=admin)).json()
        before = {"server_rss": rss(server_pid), "runner_rss": rss(loaded["pid"])}
        results: list[dict] = []
        latencies: list[float] = []
        deadline = time.monotonic() + args.seconds
        await asyncio.gather(
            probe(http, admin, deadline, latencies),
            *(client(http, tokens[i % len(tokens)], model, eos, deadline, results) for i in range(args.clients)),
        )
        pool = (await http.get("mlx/api/pool", headers=admin)).json()["models"]
        after = {"server_rss": rss(server_pid), "runner_rss": rss(pool[0]["pid"] if pool else None)}
        export = await http.get("mlx/api/audit/export", params={"format": "jsonl"}, headers=admin)
        recorded = {json.loads(line)["request_id"] for line in export.text.splitlines() if line}
    by_status: dict[str, int] = {}
    for outcome in results:
        by_status[str(outcome["status"])] = by_status.get(str(outcome["status"]), 0) + 1
    answered = [o for o in results if isinstance(o["status"], int) and o["request_id"]]
    return {
        "clients": args.clients,
        "users": args.users,
        "seconds": args.seconds,
        "requests": len(results),
        "by_status": by_status,
        "server_errors": sum(1 for o in results if isinstance(o["status"], int) and o["status"] >= 500),
        "transport_errors": sum(1 for o in results if not isinstance(o["status"], int)),
        "streams_without_done": sum(1 for o in results if o["status"] == 200 and not o["done"]),
        "lost_audit_records": sum(1 for o in answered if o["request_id"] not in recorded),
        "runner_restarted": bool(pool) and pool[0]["pid"] != loaded["pid"],
        "before": before,
        "after": after,
        "api_contents_ms": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "n": len(latencies)},
    }


def demo_model(root: Path) -> tuple[Path, int]:
    """A models folder under `root` with the offline demo model `tiny-demo`, and its EOS id."""
    models = root / "models"
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli"), "demo-model",
         "--dir", str(models), "--name", "tiny-demo"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return models, json.loads((models / "tiny-demo" / "config.json").read_text())["eos_token_id"]


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--users", type=int, default=4, help="accounts the clients are spread over")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlx-load-") as tmp:
        root = Path(tmp)
        models, eos = demo_model(root)
        process, url, token = start_server(root, models, per_user=math.ceil(args.clients / args.users))
        try:
            report = asyncio.run(run(args, url, token, process.pid, "local/tiny-demo", eos))
        finally:
            stop(process)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    ok = not report["server_errors"] and not report["lost_audit_records"] and not report["transport_errors"]
    return 0 if ok and report["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
