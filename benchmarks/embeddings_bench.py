"""Embeddings: our `mlx/v1/embeddings` (server → pool → runner) vs mlx-embeddings in-process.

For each generated demo BERT (tiny: hidden 64, 2 layers; small: hidden 384, 6 layers, about
MiniLM's shape) it measures load time (ours: `POST mlx/api/pool/load` until ready; in-process:
`mlx_embeddings.load` after the imports, and a whole cold process) and embeddings per second at
batch 1 and batch 16 (requests of 1 and 16 texts, sequential), the in-process side tokenizing
and running the model as our runner does (padded batch, attention mask, `text_embeds`).

    .venv/bin/python benchmarks/embeddings_bench.py [--models tiny small] [--requests 64]

Prints a markdown table and writes JSON to `--out` if given. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

TEXTS = [f"Sentence number {i} about notebooks, models and the quick brown fox." for i in range(16)]
SHAPES = {"tiny": (64, 2), "small": (384, 6)}

IN_PROCESS = r"""
import json, sys, time
t0 = time.perf_counter()
import mlx.core as mx
from mlx_embeddings import load
t1 = time.perf_counter()
model, tok = load(sys.argv[1])
tok = getattr(tok, "_tokenizer", tok)
t2 = time.perf_counter()
texts, n = json.loads(sys.argv[2]), int(sys.argv[3])

def embed(batch):
    enc = tok(batch, padding=True)
    out = model(mx.array(enc["input_ids"]), attention_mask=mx.array(enc["attention_mask"]))
    mx.eval(out.text_embeds)
    return out.text_embeds

embed(texts[:1])
rates = {}
for size in (1, 16):
    start = time.perf_counter()
    for i in range(n):
        embed(texts[:size] if size > 1 else [texts[i % len(texts)]])
    rates[size] = n * size / (time.perf_counter() - start)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "cold_s": t2 - t0, "per_s": rates}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(folder: Path, name: str, hidden: int, layers: int) -> Path:
    code = (
        "import sys; from jupyter_mlx_manager.models.demo import make_demo_embedding_model as m; "
        "m(sys.argv[1], hidden_size=int(sys.argv[2]), num_layers=int(sys.argv[3]))"
    )
    subprocess.run([sys.executable, "-c", code, str(folder / name), str(hidden), str(layers)], check=True)
    return folder / name


def our_server(work: Path, models: Path):
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", f"--MLXManager.data_dir={work / 'data'}",
         f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=-1", "--MLXManager.owner_username=bench",
         "--MLXManager.warm_runner=False", "--ServerApp.log_level=WARN"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/mlx/api/status", headers=headers, timeout=5).ok:
                return process, base, headers
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def ours(base: str, headers: dict, model: str, n: int) -> dict:
    start = time.perf_counter()
    requests.post(f"{base}/mlx/api/pool/load", json={"model": model}, headers=headers, timeout=300).raise_for_status()
    load = time.perf_counter() - start
    session = requests.Session()

    def embed(batch):
        body = {"model": model, "input": batch, "encoding_format": "base64"}
        session.post(f"{base}/mlx/v1/embeddings", json=body, headers=headers, timeout=60).raise_for_status()

    embed(TEXTS[:1])
    rates = {}
    for size in (1, 16):
        start = time.perf_counter()
        for i in range(n):
            embed(TEXTS[:size] if size > 1 else [TEXTS[i % len(TEXTS)]])
        rates[size] = n * size / (time.perf_counter() - start)
    return {"load_s": load, "per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--requests", type=int, default=64, help="requests per batch size (default 64)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embeddings-bench-"))
    models = work / "models"
    results = {}
    for name in args.models:
        path = build(models, f"bench-{name}", *SHAPES[name])
        child = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, str(path), json.dumps(TEXTS), str(args.requests)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        results[name] = {"in_process": json.loads(child.stdout.strip().splitlines()[-1])}
    process, base, headers = our_server(work, models)
    try:
        for name in args.models:
            results[name]["ours"] = ours(base, headers, f"local/bench-{name}", args.requests)
    finally:
        process.terminate()
        process.wait(30)
    print("| model | load: ours (pool/load) | load: in-process (after imports / cold) "
          "| emb/s batch 1: ours / in-process | emb/s batch 16: ours / in-process |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, r in results.items():
        o, p = r["ours"], r["in_process"]
        print(
            f"| {name} | {o['load_s']:.2f} s | {p['load_s']:.2f} s / {p['cold_s']:.2f} s "
            f"| {o['per_s'][1]:.0f} / {p['per_s']['1']:.0f} | {o['per_s'][16]:.0f} / {p['per_s']['16']:.0f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
