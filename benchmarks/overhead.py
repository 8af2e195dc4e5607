"""Per-request overhead of this checkout against an older tree, side by side in one run.

Two Jupyter servers on the same tiny demo model (a decode step of about 1 ms, so the server's own
costs dominate): the older package through PYTHONPATH and this checkout. Requests alternate
between them: non-streamed chats of one token (the whole per-request path: auth, parse, pipeline,
runner round trip, audit) and rounds of 8 concurrent chats of 64 tokens.

    git archive <rev> jupyter_mlx_manager | tar -x -C /tmp/before
    .venv/bin/python benchmarks/overhead.py /tmp/before [--requests 60] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from load import demo_model, start_server, stop

MODEL = "local/tiny-demo"


class Server:
    """A Jupyter server with the model loaded; `pythonpath`: the package tree it runs (or ours)."""

    def __init__(self, root: Path, models: Path, pythonpath: str | None):
        self.process, self.url, token = start_server(root, models, per_user=16, pythonpath=pythonpath)
        self.headers = {"Authorization": f"token {token}"}
        load = requests.post(self.url + "mlx/api/pool/load", json={"model": MODEL}, headers=self.headers, timeout=120)
        load.raise_for_status()

    def chat(self, eos: int, tokens: int) -> float:
        """Seconds for one non-streamed chat of exactly `tokens` tokens."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
                "temperature": 0, "logit_bias": {str(eos): -100}}  # fmt: skip
        start = time.perf_counter()
        requests.post(
            self.url + "mlx/v1/chat/completions", json=body, headers=self.headers, timeout=120
        ).raise_for_status()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="a folder holding an older jupyter_mlx_manager package")
    parser.add_argument("--requests", type=int, default=60, help="one-token chats per server (default: 60)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of 8 concurrent chats per server (default: 6)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models, eos = demo_model(root)
        servers: dict[str, Server] = {}
        try:
            for name, pythonpath in (("before", args.before), ("after", None)):
                (root / name).mkdir()
                servers[name] = Server(root / name, models, pythonpath)
            for server in servers.values():  # warm both
                for _ in range(3):
                    server.chat(eos, 1)
            latency: dict[str, list[float]] = {name: [] for name in servers}
            throughput: dict[str, list[float]] = {name: [] for name in servers}
            for i in range(max(args.requests, args.rounds)):
                order = list(servers.items()) if i % 2 else list(servers.items())[::-1]
                for name, server in order:
                    if i < args.requests:
                        latency[name].append(server.chat(eos, 1))
                    if i < args.rounds:
                        start = time.perf_counter()
                        with ThreadPoolExecutor(8) as pool:
                            list(pool.map(lambda _, s=server: s.chat(eos, 64), range(8)))
                        throughput[name].append(8 * 64 / (time.perf_counter() - start))
        finally:
            for server in servers.values():
                stop(server.process)
    result = {
        name: {
            "c1_request_ms_p50": round(statistics.median(latency[name]) * 1000, 2),
            "c8_aggregate_tok_s_median": round(statistics.median(throughput[name]), 1),
        }
        for name in servers
    }
    result["after_vs_before"] = {
        "c1_latency": round(result["after"]["c1_request_ms_p50"] / result["before"]["c1_request_ms_p50"], 3),
        "c8_throughput": round(
            result["after"]["c8_aggregate_tok_s_median"] / result["before"]["c8_aggregate_tok_s_median"], 3
        ),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
