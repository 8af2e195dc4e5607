"""Two users on one model: memory with a server (and runner) each vs one shared model service.

A: two Jupyter servers, one per user, each loads the model (what a Hub does without the
shared service). B: one `jupyter mlx-manager serve` with two accounts, both chatting with the
same model (what every user's `pool_url` server forwards to). Reports the RSS of each process
tree and how many runners hold the model.

    .venv/bin/python benchmarks/shared_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from load import demo_model, free_port, start_server, stop

MODEL = "local/tiny-demo"


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def runners(pid: int) -> int:
    return sum(
        "jupyter_mlx_manager.runner" in " ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True)
    )


def chat(url: str, headers: dict, eos: int) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32,
            "logit_bias": {str(eos): -100}}  # fmt: skip
    httpx.post(url + "mlx/v1/chat/completions", json=body, headers=headers, timeout=120).raise_for_status()


def per_user_servers(root: Path, models: Path, eos: int) -> dict:
    started = [start_server(root / name, models, per_user=8) for name in ("alice", "bob")]
    try:
        for _, url, token in started:
            chat(url, {"Authorization": f"token {token}"}, eos)
        time.sleep(1)
        return {
            "rss_bytes": sum(tree_rss(p.pid) for p, _, _ in started),
            "runners": sum(runners(p.pid) for p, _, _ in started),
        }
    finally:
        for process, _, _ in started:
            stop(process)


def shared_service(root: Path, models: Path, eos: int) -> dict:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "serve", "--port", str(port),
         f"--MLXManager.data_dir={root / 'data'}", f"--MLXManager.model_dirs={models}",
         "--MLXManager.default_keep_alive=-1", "--MLXManager.warm_runner=False", "--MLXManager.registration_limit=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "mlx/api/openapi.json", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        tokens = {}
        for name in ("alice", "bob"):  # the first account is the admin; it approves the second
            password = f"password of {name}"
            user = httpx.post(url + "mlx/api/auth/register", json={"username": name, "password": password}).json()
            if name == "bob":
                admin = {"Authorization": f"Bearer {tokens['alice']}"}
                httpx.patch(url + f"mlx/api/users/{user['id']}", json={"status": "approved"}, headers=admin)
            login = httpx.post(url + "mlx/api/auth/login", json={"username": name, "password": password}).json()
            tokens[name] = login["access_token"]
        for token in tokens.values():
            chat(url, {"Authorization": f"Bearer {token}"}, eos)
        time.sleep(1)
        return {"rss_bytes": tree_rss(process.pid), "runners": runners(process.pid)}
    finally:
        stop(process)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mlx-shared-") as tmp:
        root = Path(tmp)
        models, eos = demo_model(root)
        for name in ("alice", "bob", "service"):
            (root / name).mkdir()
        alone = per_user_servers(root, models, eos)
        shared = shared_service(root / "service", models, eos)
    report = {
        "per_user_servers": alone,
        "shared_service": shared,
        "ratio": round(shared["rss_bytes"] / alone["rss_bytes"], 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
