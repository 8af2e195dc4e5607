"""What our edge adds to a remote model's stream, one run.

Two upstreams, each called directly and through our server (`remote_backends`), alternating:

* `mlx_lm.server` on a generated demo model: time to first token (TTFT) and total time of a
  streamed chat, direct vs through us (ratios and the added milliseconds);
* a stamping upstream (this file, stdlib only) whose every chunk carries the moment it was
  written (`time.monotonic_ns()`, one clock for every process on the machine): the latency
  from upstream chunk to client chunk, direct vs through us.

    .venv/bin/python benchmarks/remote_overhead.py [--rounds 20] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stamping(BaseHTTPRequestHandler):
    """Streams `max_tokens` chunks, 5 ms apart, each holding its send time in ns."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for _ in range(body.get("max_tokens") or 16):
            time.sleep(0.005)
            delta = {"content": f"{time.monotonic_ns()} "}
            self.wfile.write(f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


def wait_for(url: str, headers: dict | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def stream(client: httpx.Client, url: str, body: dict) -> tuple[float, float, list[tuple[int, str]]]:
    """(TTFT s, total s, [(arrival ns, content)]) of one streamed chat."""
    started, first, chunks = time.perf_counter(), None, []
    with client.stream("POST", url, json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                chunks.append((time.monotonic_ns(), content))
                first = first or time.perf_counter()
    return first - started, time.perf_counter() - started, chunks


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="remote-overhead-"))
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(work / "cli"), "demo-model",
         "--dir", str(work / "models"), "--name", "tiny"],
        check=True, capture_output=True,
    )  # fmt: skip
    model = (work / "models" / "tiny").resolve()
    eos = json.loads((model / "config.json").read_text())["eos_token_id"]
    (work / "hf").mkdir()
    mlx_port, ours_port, token = free_port(), free_port(), os.urandom(16).hex()
    stamping = ThreadingHTTPServer(("127.0.0.1", 0), Stamping)
    threading.Thread(target=stamping.serve_forever, daemon=True).start()
    stamp_url = f"http://127.0.0.1:{stamping.server_address[1]}/v1"
    (work / "config").mkdir()
    backends = {"mlx": {"url": f"http://127.0.0.1:{mlx_port}/v1"}, "stamp": {"url": stamp_url, "models": ["s"]}}
    (work / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"MLXManager": {"remote_backends": backends, "warm_runner": False}})
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(work / "hf"),
        "HF_HUB_OFFLINE": "1",
        "JUPYTER_CONFIG_DIR": str(work / "config"),
    }
    processes = [
        subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--port", str(mlx_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env),
        subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True",
                          f"--ServerApp.port={ours_port}", f"--IdentityProvider.token={token}",
                          f"--ServerApp.root_dir={work}", f"--MLXManager.data_dir={work / 'data'}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env),
    ]  # fmt: skip
    try:
        headers = {"Authorization": f"token {token}"}
        ours = f"http://127.0.0.1:{ours_port}/mlx/v1/chat/completions"
        wait_for(f"http://127.0.0.1:{mlx_port}/v1/models")
        wait_for(f"http://127.0.0.1:{ours_port}/mlx/v1/models", headers)
        messages = [{"role": "user", "content": "Write a short story about a robot."}]
        chat = {"messages": messages, "max_tokens": args.tokens, "stream": True, "logit_bias": {str(eos): -100}}
        targets = {
            "mlx direct": (f"http://127.0.0.1:{mlx_port}/v1/chat/completions", {**chat, "model": str(model)}),
            "mlx ours": (ours, {**chat, "model": f"remote/mlx/{model}"}),
            "stamp direct": (stamp_url + "/chat/completions", {**chat, "model": "s"}),
            "stamp ours": (ours, {**chat, "model": "remote/stamp/s"}),
        }
        results: dict[str, dict[str, list[float]]] = {name: {"ttft": [], "total": [], "chunk": []} for name in targets}
        with httpx.Client(headers=headers, timeout=120) as client:
            for name, (url, body) in targets.items():  # warm-up: first loads, first connections
                stream(client, url, body)
            for _ in range(args.rounds):
                for name, (url, body) in targets.items():
                    ttft, total, chunks = stream(client, url, body)
                    results[name]["ttft"].append(ttft)
                    results[name]["total"].append(total)
                    if name.startswith("stamp"):
                        results[name]["chunk"] += [(at - int(text)) / 1e9 for at, text in chunks]
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        stamping.shutdown()
    print(f"{args.rounds} rounds, {args.tokens} tokens per stream; medians")
    for upstream in ("mlx", "stamp"):
        direct, ours_ = results[f"{upstream} direct"], results[f"{upstream} ours"]
        for metric in ("ttft", "total", "chunk") if upstream == "stamp" else ("ttft", "total"):
            d, o = median_ms(direct[metric]), median_ms(ours_[metric])
            print(
                f"{upstream:5} {metric:5}: direct {d:8.2f} ms  ours {o:8.2f} ms  added {o - d:7.2f} ms  ratio {o / d:5.2f}"
            )


if __name__ == "__main__":
    main()
