"""Background batches vs people typing, on one server and one model, in one run.

1. Interactive TTFT (streaming chat, first content chunk) on an idle server.
2. A batch of `--lines` chat requests (OpenAI's Batch API) is submitted; while it runs, the
   same interactive probe again: batch lines wait behind interactive requests and hold at most
   `batch_slots` decoding slots, so the ratio shows what a running batch costs a person.
3. The batch's throughput (lines/s, completion tokens/s) vs the same lines through the kernel
   client's `map()` (8 requests in flight at interactive priority), on the idle server.

EOS is suppressed with `logit_bias`, so every line generates exactly `--max-tokens` tokens.

    .venv/bin/python benchmarks/batch_bench.py [--lines 200] [--out report.json]

On Apple Silicon decode is memory-bandwidth-bound and batching pays off more than on this CPU:
the throughput figures move; the TTFT ratio (a scheduling property) should hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from load import demo_model, percentile, start_server, stop

from jupyter_mlx_manager.client import connect

MODEL = "local/tiny-demo"


def ttft_ms(http: httpx.Client, headers: dict, eos: int) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": True,
            "temperature": 0, "logit_bias": {str(eos): -100}}  # fmt: skip
    started = time.perf_counter()
    with http.stream("POST", "mlx/v1/chat/completions", json=body, headers=headers) as reply:
        reply.raise_for_status()
        lines = reply.iter_lines()
        for line in lines:
            if line.startswith("data:") and '"content"' in line:
                first = time.perf_counter()
                for _ in lines:  # the rest of the reply
                    pass
                return (first - started) * 1000
    raise RuntimeError("no content")


def probe(http: httpx.Client, headers: dict, eos: int, samples: int, gap: float = 0.2) -> dict:
    values = []
    for _ in range(samples):
        values.append(ttft_ms(http, headers, eos))
        time.sleep(gap)
    return {"p50_ms": round(statistics.median(values), 1), "p95_ms": round(percentile(values, 0.95), 1)}


def lines(count: int, max_tokens: int, eos: int) -> list[dict]:
    return [
        {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Summarise item {i}."}],
                  "max_tokens": max_tokens, "temperature": 0, "logit_bias": {str(eos): -100}}}
        for i in range(count)
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--samples", type=int, default=15, help="interactive TTFT samples per phase")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlx-batch-") as tmp:
        root = Path(tmp)
        models, eos = demo_model(root)
        process, url, token = start_server(root, models, per_user=16)
        headers = {"Authorization": f"token {token}"}
        try:
            with httpx.Client(base_url=url, timeout=300) as http:
                http.post("mlx/api/pool/load", json={"model": MODEL}, headers=headers).raise_for_status()
                ttft_ms(http, headers, eos)  # warm-up
                idle = probe(http, headers, eos, args.samples)

                requests = lines(args.lines, args.max_tokens, eos)
                data = b"".join(json.dumps(line).encode() + b"\n" for line in requests)
                upload = http.post(
                    "mlx/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"}, headers=headers
                ).json()
                started = time.perf_counter()
                batch = http.post(
                    "mlx/v1/batches",
                    json={
                        "input_file_id": upload["id"],
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    },
                    headers=headers,
                ).json()
                while (
                    http.get(f"mlx/v1/batches/{batch['id']}", headers=headers).json()["request_counts"]["completed"] < 8
                ):
                    time.sleep(0.05)
                busy = probe(http, headers, eos, args.samples)
                while (found := http.get(f"mlx/v1/batches/{batch['id']}", headers=headers).json())["status"] not in (
                    "completed", "failed", "cancelled",
                ):  # fmt: skip
                    time.sleep(0.2)
                batch_seconds = time.perf_counter() - started
                assert found["request_counts"]["completed"] == args.lines, found

            client = connect(url, token)
            started = time.perf_counter()
            mapped = client.map(
                MODEL, [r["body"]["messages"] for r in requests], progress=False, max_tokens=args.max_tokens,
                temperature=0, logit_bias={str(eos): -100},
            )  # fmt: skip
            map_seconds = time.perf_counter() - started
            assert all(not isinstance(r, Exception) for r in mapped)
        finally:
            stop(process)
    tokens = args.lines * args.max_tokens
    report = {
        "lines": args.lines,
        "max_tokens": args.max_tokens,
        "interactive_ttft_idle": idle,
        "interactive_ttft_during_batch": busy,
        "ttft_p50_ratio_busy_vs_idle": round(busy["p50_ms"] / idle["p50_ms"], 2),
        "batch": {
            "seconds": round(batch_seconds, 1),
            "lines_per_s": round(args.lines / batch_seconds, 2),
            "tokens_per_s": round(tokens / batch_seconds, 1),
        },  # fmt: skip
        "map": {
            "seconds": round(map_seconds, 1),
            "lines_per_s": round(args.lines / map_seconds, 2),
            "tokens_per_s": round(tokens / map_seconds, 1),
        },  # fmt: skip
        "batch_vs_map_throughput": round(map_seconds / batch_seconds, 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
