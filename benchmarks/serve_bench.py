"""Serving benchmark: our `mlx/v1` endpoint vs `mlx_lm.server`, side by side in one run.

Both serve the same generated model; rounds alternate between the two servers so that
machine noise hits both alike. For concurrency 1, 4 and 8 it reports time to first token
(p50/p95), per-request decode tokens/s, aggregate tokens/s, and each figure's ratio to
in-process `mlx_lm.stream_generate` (the ceiling). EOS is suppressed with `logit_bias`,
so every request generates exactly `--max-tokens` tokens.

    .venv/bin/python benchmarks/serve_bench.py [--hidden 64 --layers 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

PROMPT = "Write a short story about a robot who learns to paint."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, headers: dict, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.get(url, headers=headers, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def one_request(url: str, headers: dict, model: str, max_tokens: int, logit_bias: dict) -> dict:
    body = {
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
        "temperature": 0, "logit_bias": logit_bias, "stream": True,
    }  # fmt: skip
    start = time.perf_counter()
    first = last = None
    chunks = 0
    with requests.post(url, json=body, headers=headers, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("choices") and data["choices"][0].get("delta", {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    return {"ttft": (first - start) if first else None, "decode_s": (last - first) if first else None, "chunks": chunks, "end": time.perf_counter()}


def run_level(url: str, headers: dict, model: str, concurrency: int, max_tokens: int, logit_bias: dict) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: one_request(url, headers, model, max_tokens, logit_bias), range(concurrency)))
    wall = max(r["end"] for r in results) - start
    return {
        "ttft": [r["ttft"] for r in results],
        "decode_tps": [(max_tokens - 1) / r["decode_s"] for r in results if r["decode_s"]],
        "aggregate_tps": concurrency * max_tokens / wall,
    }


def in_process_baseline(model_path: Path, max_tokens: int, logit_bias: dict, repeats: int = 3) -> dict:
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_logits_processors

    model, tokenizer = load(str(model_path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    processors = make_logits_processors(logit_bias={int(k): v for k, v in logit_bias.items()})
    ttfts, tps = [], []
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        first = last = None
        for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, logits_processors=processors):
            now = time.perf_counter()
            first = first or now
            last = now
        ttfts.append(first - start)
        tps.append((max_tokens - 1) / (last - first))
    mx.clear_cache()
    return {"ttft_p50": statistics.median(ttfts[1:]), "decode_tps_p50": statistics.median(tps[1:])}


def summarize(samples: list[dict]) -> dict:
    ttft = [t for s in samples for t in s["ttft"] if t is not None]
    decode = [t for s in samples for t in s["decode_tps"]]
    return {
        "ttft_p50_ms": 1000 * percentile(ttft, 0.5),
        "ttft_p95_ms": 1000 * percentile(ttft, 0.95),
        "decode_tps_p50": percentile(decode, 0.5),
        "aggregate_tps": statistics.median(s["aggregate_tps"] for s in samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from jupyter_mlx_manager.models.demo import make_demo_model

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_path = make_demo_model(work / "models" / "bench", hidden_size=args.hidden, num_layers=args.layers)
    eos = json.loads((model_path / "config.json").read_text())["eos_token_id"]
    logit_bias = {str(eos): -100}

    baseline = in_process_baseline(model_path, args.max_tokens, logit_bias)

    token, ours_port, theirs_port = secrets.token_hex(16), free_port(), free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    ours = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True", f"--ServerApp.port={ours_port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", f"--MLXManager.data_dir={work / 'data'}",
         f"--MLXManager.model_dirs={work / 'models'}", "--MLXManager.default_keep_alive=-1", "--MLXManager.owner_username=bench",
         "--ServerApp.log_level=WARN"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    theirs = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(model_path), "--port", str(theirs_port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    servers = {
        "jupyter-mlx-manager": (f"http://127.0.0.1:{ours_port}/mlx/v1/chat/completions", {"Authorization": f"token {token}"}, "local/bench"),
        "mlx_lm.server": (f"http://127.0.0.1:{theirs_port}/v1/chat/completions", {}, str(model_path)),
    }
    try:
        wait_ready(f"http://127.0.0.1:{ours_port}/api/status", servers["jupyter-mlx-manager"][1], ours)
        wait_ready(f"http://127.0.0.1:{theirs_port}/v1/models", {}, theirs)
        for url, headers, model in servers.values():  # warm up: load, compile
            one_request(url, headers, model, 8, logit_bias)
        results: dict = {"model": {"hidden": args.hidden, "layers": args.layers}, "max_tokens": args.max_tokens,
                         "in_process": baseline, "servers": {}}  # fmt: skip
        for concurrency in args.concurrency:
            samples = {name: [] for name in servers}
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in order:
                    samples[name].append(run_level(*servers[name], concurrency, args.max_tokens, logit_bias))
            for name in servers:
                summary = summarize(samples[name])
                summary["decode_vs_in_process"] = summary["decode_tps_p50"] / baseline["decode_tps_p50"]
                results["servers"].setdefault(name, {})[str(concurrency)] = summary
    finally:
        for process in (ours, theirs):
            process.send_signal(signal.SIGTERM)
            process.wait(30)

    print(json.dumps(results, indent=2))
    print()
    print(f"in-process stream_generate: decode {baseline['decode_tps_p50']:.0f} tok/s, TTFT {1000 * baseline['ttft_p50']:.1f} ms\n")
    print("| server | conc. | TTFT p50 ms | TTFT p95 ms | decode tok/s p50 | × in-process | aggregate tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name, levels in results["servers"].items():
        for concurrency, s in levels.items():
            print(f"| {name} | {concurrency} | {s['ttft_p50_ms']:.1f} | {s['ttft_p95_ms']:.1f} | {s['decode_tps_p50']:.0f} | "
                  f"{s['decode_vs_in_process']:.2f} | {s['aggregate_tps']:.0f} |")  # fmt: skip
    ours_levels, theirs_levels = results["servers"]["jupyter-mlx-manager"], results["servers"]["mlx_lm.server"]
    print("\n| conc. | ours/mlx_lm decode | ours/mlx_lm aggregate | ours/mlx_lm TTFT p50 |")
    print("|---|---|---|---|")
    for c in ours_levels:
        o, t = ours_levels[c], theirs_levels[c]
        print(f"| {c} | {o['decode_tps_p50'] / t['decode_tps_p50']:.2f} | {o['aggregate_tps'] / t['aggregate_tps']:.2f} | {o['ttft_p50_ms'] / t['ttft_p50_ms']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
