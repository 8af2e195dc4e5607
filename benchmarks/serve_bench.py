"""Serving benchmark: our `mlx/v1` endpoint vs `mlx_lm.server` vs in-process mlx-lm, one run.

For each generated model (tiny: hidden 64, 2 layers; small: hidden 512, 8 layers; bench:
`demo-model --size bench`, hidden 384, 6 layers, context 8192) both
servers serve the same weights, started fresh, and every measurement alternates between
them so that machine noise hits both alike. EOS is suppressed with `logit_bias`, so every
request generates exactly its `max_tokens`.

* throughput at concurrency 1, 4, 8: TTFT p50/p95, per-request decode tok/s, aggregate
  tok/s; in-process `stream_generate` (concurrency 1) and `BatchGenerator` (4, 8) are the
  ceilings, measured in a child process;
* admission: a short request arriving while 7 long ones decode — its TTFT p50/p95;
* prompt cache: ~800 tokens of shared system prompt, TTFT of the first (cold) and of a
  second request sharing it (warm);
* responsiveness (ours only): `GET api/contents` p50/p99, idle and while 8 generations run;
* memory: our runner's RSS (from `mlx/api/pool`) and the `mlx_lm.server` process's RSS;
* long prefill (`--probes prefill`): while 7 streams decode, a ~1,700-token prompt arrives and
  a moment later a short request: the short one's TTFT (sent during the long prefill), the long
  one's TTFT, and the inter-token p50/p99 of the 7 running streams from the long request's send
  to its first token; ours vs `mlx_lm.server`, each with its default prefill step;
* concurrency 8 vs `batch_generate` (`--probes batch`): aggregate tok/s of each server and of
  in-process `mlx_lm.batch_generate` (a child process) on the same 8 prompts, as ratios;
* prompt cache on disk (`--probes disk`, ours only): TTFT of a long prompt (`--prefill-rules`)
  cold, warm from memory, and warm from disk after an unload and a load; then the disk hit again
  while 4 streams decode: their longest inter-token gap while it is read and joins, against
  their median gap (the file is read off the generation thread);
* speculative decoding (`--probes speculative`, ours only): one greedy stream's tok/s on
  an edit-like prompt (code that repeats) and on a story prompt, the model loaded plain, with
  prompt lookup, and with a draft model (`demo-model --size tiny`: the same tokenizer), as
  speed-ups over plain with each one's acceptance rate. The demo models have random weights:
  a draft agrees with the model only by chance here, so the draft figure is its overhead at a
  low acceptance rate, not the speed-up of a trained draft. Also each mode's TTFT of a long
  prompt (`--prefill-rules`) sent again (a retried agent turn: a prompt-cache hit), as a ratio
  to plain's: with a draft model, the draft's KV cache is cached beside the model's;
* load latency (`--probes load` runs only this one): `POST mlx/api/pool/load` request → ready,
  ours with the warm spare runner (`warm_runner`, the default) and without it, against
  `mlx_lm.server` start → first successful `GET /v1/models` (its model loads in a thread while
  it already answers, so also start → first completed 1-token chat, for both), and in-process
  `mlx_lm.load` (imports done; and a whole cold process: start, imports, load, first token).

One command writes JSON, a markdown table and a PNG plot into `--out`:

    .venv/bin/pip install matplotlib     # only for the PNG; without it the plot is skipped
    .venv/bin/python benchmarks/serve_bench.py --out benchmarks/results

`--models tiny` and `--rounds 1` make a quicker run; `--probes speculative --models bench` only the
speculative comparison; `--probes load` measures only load
latency (`--load-repeats` times each, medians); `--probes prefill batch --models tiny` only the
long-prefill and batch_generate comparisons (a few minutes). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

PROMPT = "Write a short story about a robot who learns to paint."
MODELS = {"tiny": (64, 2), "small": (512, 8), "bench": (384, 6)}  # bench: `demo-model --size bench`
OURS, THEIRS = "jupyter-mlx-manager", "mlx_lm.server"
RULE = "Rule {i}: answer briefly, cite the notebook cell, and keep numbers exact."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, headers: dict, process: subprocess.Popen, timeout: float = 180) -> None:
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
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def produced(choice: dict) -> bool:
    """A streamed chunk carries generated output: text, reasoning or a tool call (a random-weight
    model sometimes opens a tool-call block, whose tokens are not `content`)."""
    return any(value for key, value in choice.get("delta", {}).items() if key != "role")


class Server:
    def __init__(self, name: str, url: str, headers: dict, model: str, process: subprocess.Popen, base: str):
        self.name, self.url, self.headers, self.model, self.process, self.base = (
            name,
            url,
            headers,
            model,
            process,
            base,
        )

    def stream(
        self, messages: list[dict], max_tokens: int, logit_bias: dict, stop: threading.Event | None = None
    ) -> dict:
        """One streamed chat request: TTFT, decode time, chunks (stops early if `stop` is set)."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "logit_bias": logit_bias, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        start = time.perf_counter()
        first = last = None
        chunks, usage = 0, None
        with requests.post(self.url, json=body, headers=self.headers, stream=True, timeout=900) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                data = json.loads(line[6:])
                usage = data.get("usage") or usage
                if data.get("choices") and produced(data["choices"][0]):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                if stop is not None and stop.is_set():
                    break
        return {"ttft": (first - start) if first else None, "decode_s": (last - first) if first else None,
                "chunks": chunks, "start": start, "first_at": first, "end": time.perf_counter(), "usage": usage}  # fmt: skip


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- throughput -----------------------------------------------------------------------------------
def run_level(
    server: Server, concurrency: int, max_tokens: int, logit_bias: dict, prompts: list[str] | None = None
) -> dict:
    """`concurrency` requests at once; each prompt starts with a fresh nonce, so no prompt
    cache can serve it (the cache has its own probe). `prompts`: these instead."""
    prompts = prompts or [f"[{secrets.token_hex(3)}] {PROMPT}" for _ in range(concurrency)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: server.stream(user(p), max_tokens, logit_bias), prompts))
    wall = max(r["end"] for r in results) - start
    return {
        "ttft": [r["ttft"] for r in results],
        "decode_tps": [(max_tokens - 1) / r["decode_s"] for r in results if r["decode_s"]],
        "aggregate_tps": concurrency * max_tokens / wall,
    }


def summarize(samples: list[dict]) -> dict:
    ttft = [t for s in samples for t in s["ttft"] if t is not None]
    decode = [t for s in samples for t in s["decode_tps"]]
    return {
        "ttft_p50_ms": 1000 * percentile(ttft, 0.5),
        "ttft_p95_ms": 1000 * percentile(ttft, 0.95),
        "decode_tps_p50": percentile(decode, 0.5),
        "aggregate_tps": statistics.median(s["aggregate_tps"] for s in samples),
    }


# -- probes ---------------------------------------------------------------------------------------
class Background:
    """`count` long generations that run until stopped (their streams are then closed)."""

    def __init__(self, server: Server, count: int, max_tokens: int, logit_bias: dict):
        self.stop = threading.Event()
        self.first_tokens = threading.Semaphore(0)
        self.threads = [
            threading.Thread(target=self._one, args=(server, i, max_tokens, logit_bias), daemon=True)
            for i in range(count)
        ]
        self.done = 0
        self.outcomes: list[str] = []  # how each stream ended, for the record
        self.times: list[list[float]] = [[] for _ in range(count)]  # when each content chunk arrived
        for thread in self.threads:
            thread.start()
        for _ in self.threads:
            self.first_tokens.acquire(timeout=120)

    def _one(self, server: Server, i: int, max_tokens: int, logit_bias: dict) -> None:
        body = {"model": server.model, "messages": user(f"[{secrets.token_hex(3)}] {PROMPT}"), "max_tokens": max_tokens, "temperature": 0,
                "logit_bias": logit_bias, "stream": True}  # fmt: skip
        signalled, outcome, last = False, "ended", b""
        try:
            with requests.post(server.url, json=body, headers=server.headers, stream=True, timeout=900) as reply:
                if not reply.ok:
                    outcome = f"HTTP {reply.status_code}: {reply.text[:200]}"
                    return
                for line in reply.iter_lines():
                    last = line or last
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        choices = json.loads(line[6:]).get("choices")
                        if choices and produced(choices[0]):
                            self.times[i].append(time.perf_counter())
                            if not signalled:
                                signalled = True
                                self.first_tokens.release()
                    if self.stop.is_set():
                        outcome = "stopped"
                        break
                else:
                    outcome = f"ended by the server: {last[:200]!r}"
        except Exception as exc:  # noqa: BLE001 - recorded, the probe goes on with a new batch
            outcome = f"{type(exc).__name__}: {exc}"
        finally:
            if not signalled:
                self.first_tokens.release()
            self.outcomes.append(outcome)
            self.done += 1

    @property
    def running(self) -> bool:
        return self.done == 0

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)


def admission_probe(server: Server, logit_bias: dict, samples: int, long_tokens: int) -> dict:
    """TTFT of short requests arriving at random moments while 7 long ones decode.

    A sample counts only if all 7 were still decoding when it finished; should one of them
    end early, a new set of 7 is started (at most 3 times) and the ends are recorded."""
    ttfts, no_content, ended = [], 0, []
    rng = random.Random(0)
    for _attempt in range(3):
        background = Background(server, 7, long_tokens, logit_bias)
        try:
            while len(ttfts) < samples and background.running:
                time.sleep(rng.uniform(0.05, 0.5))
                result = server.stream(user(f"[{secrets.token_hex(3)}] Quick question"), 4, logit_bias)
                if result["ttft"] is None:
                    no_content += 1
                elif background.running:
                    ttfts.append(result["ttft"])
        finally:
            background.close()
        ended += [o for o in background.outcomes if o != "stopped"]
        if len(ttfts) >= samples:
            break
    return {"ttfts_ms": [1000 * t for t in ttfts], "probes_without_text": no_content, "long_streams_ended_early": ended}


def cache_probe(server: Server, logit_bias: dict, repeats: int, rules: int) -> dict:
    """TTFT of a request with a new ~800-token system prompt (cold), then of one sharing it (warm)."""
    cold, warm, prompt_tokens, cached = [], [], [], []
    for _ in range(repeats):
        system = f"Session {secrets.token_hex(4)}. " + " ".join(RULE.format(i=i) for i in range(rules))
        first = server.stream([{"role": "system", "content": system}, *user("What does cell 3 print?")], 4, logit_bias)
        second = server.stream([{"role": "system", "content": system}, *user("And cell 4?")], 4, logit_bias)
        cold.append(first["ttft"])
        warm.append(second["ttft"])
        usage = second["usage"] or {}
        prompt_tokens.append(usage.get("prompt_tokens"))
        cached.append((usage.get("prompt_tokens_details") or {}).get("cached_tokens"))
    return {
        "cold_ttft_ms": 1000 * statistics.median(cold),
        "warm_ttft_ms": 1000 * statistics.median(warm),
        "warm_over_cold": statistics.median(warm) / statistics.median(cold),
        "prompt_tokens": prompt_tokens[-1],
        "cached_tokens": cached[-1],
    }


def contents_probe(server: Server, token: str, logit_bias: dict, samples: int, long_tokens: int) -> dict:
    """Latency of Jupyter's own `GET api/contents`, idle and while 8 generations run."""
    url = f"{server.base}/api/contents"
    headers = {"Authorization": f"token {token}"}

    def measure() -> list[float]:
        times = []
        with requests.Session() as session:
            for _ in range(samples):
                start = time.perf_counter()
                session.get(url, headers=headers, timeout=30).raise_for_status()
                times.append(time.perf_counter() - start)
                time.sleep(0.01)
        return times

    idle = measure()
    background = Background(server, 8, long_tokens, logit_bias)
    try:
        busy = measure()
        still_busy = background.running
    finally:
        background.close()
    stats = lambda t: {"p50_ms": 1000 * percentile(t, 0.5), "p99_ms": 1000 * percentile(t, 0.99)}  # noqa: E731
    return {"idle": stats(idle), "during_8_generations": {**stats(busy), "generations_outlasted_probe": still_busy}}


# -- long prefill, and c=8 against batch_generate ----------------------------------------------------
def long_messages(rules: int) -> list[dict]:
    """A long prompt (about 47 tokens per rule on the demo tokenizer) with a fresh nonce: never cached."""
    return user(f"[{secrets.token_hex(4)}] " + " ".join(RULE.format(i=i) for i in range(rules)) + " Summarize.")


def gaps_between(times: list[list[float]], start: float, end: float) -> list[float]:
    return [b - a for ts in times for a, b in zip(ts, ts[1:], strict=False) if a >= start and b <= end]


def demo_options(name: str) -> dict:
    """`make_demo_model` options for a size: `demo-model --size`'s, with room for a ~6,000-token prompt."""
    from jupyter_mlx_manager.models.demo import SIZES

    hidden, layers = MODELS[name]
    return {**SIZES.get(name, {"hidden_size": hidden, "num_layers": layers}), "context_length": 8192}


def disk_cache_probe(server: Server, logit_bias: dict, rules: int, repeats: int) -> dict:
    """TTFT of a long prompt: cold, warm from the prompt cache in memory, and warm from the
    prompt cache on disk after an unload (ours only; medians of `repeats` fresh prompts). Then
    each prompt from disk once more while 4 streams decode: their gaps while it is read."""
    pool_url, model = f"{server.base}/mlx/api/pool", server.model

    def disk_bytes() -> int:
        return requests.get(pool_url, headers=server.headers, timeout=10).json()["prompt_cache_disk_bytes"]

    def reload() -> None:  # the memory's prompt cache goes with the runner; the disk's stays
        requests.post(
            f"{pool_url}/unload", json={"model": model}, headers=server.headers, timeout=60
        ).raise_for_status()
        requests.post(f"{pool_url}/load", json={"model": model}, headers=server.headers, timeout=300).raise_for_status()

    cold, memory, disk, prompts = [], [], [], []
    for _ in range(repeats):
        messages = [{"role": "system", "content": f"[{secrets.token_hex(4)}] " + long_messages(rules)[0]["content"]},
                    *user("What is rule 3?")]  # fmt: skip
        prompts.append(messages)
        on_disk = disk_bytes()
        cold.append(server.stream(messages, 8, logit_bias)["ttft"])
        memory.append(server.stream(messages, 8, logit_bias)["ttft"])
        deadline = time.monotonic() + 120
        while disk_bytes() <= on_disk:
            if time.monotonic() > deadline:
                raise RuntimeError("the prompt cache was not written to disk")
            time.sleep(0.05)
        reload()
        disk.append(server.stream(messages, 8, logit_bias)["ttft"])
    typical, stalls = [], []
    for messages in prompts:
        reload()
        background = Background(server, 4, 4000, logit_bias)
        try:
            time.sleep(1.0)
            sent = time.perf_counter()
            first = sent + server.stream(messages, 8, logit_bias)["ttft"]
            time.sleep(0.5)
        finally:
            background.close()
        gaps = [(a, b - a) for ts in background.times for a, b in zip(ts, ts[1:], strict=False)]
        stalls.append(max(gap for a, gap in gaps if sent - gap < a < first))  # every gap the read and join overlap
        typical.append(statistics.median(gap for _, gap in gaps))
    med = lambda values: 1000 * statistics.median(values)  # noqa: E731
    return {"cold_ttft_ms": med(cold), "memory_ttft_ms": med(memory), "disk_ttft_ms": med(disk), "repeats": repeats,
            "disk_vs_cold": statistics.median(disk) / statistics.median(cold),
            "streams_gap_p50_ms": med(typical), "streams_max_gap_during_disk_hit_ms": med(stalls),
            "disk_hit_stall_over_p50": statistics.median(stalls) / statistics.median(typical)}  # fmt: skip


def prefill_probe(server: Server, logit_bias: dict, samples: int, rules: int, running_tokens: int) -> dict:
    """While 7 streams decode, a request with a long prompt arrives; a moment later a short one.

    Per sample: the short request's TTFT (it counts only if it was sent before the long one's
    first token, i.e. while the long prompt was prefilling), the long one's TTFT, and the
    inter-token gaps of the 7 running streams between the long request's send and its first
    token. The short request is sent 20% of the long prompt's TTFT alone (measured first) after it."""
    alone = server.stream(long_messages(rules), 8, logit_bias)
    delay = 0.2 * (alone["ttft"] or alone["end"] - alone["start"])
    short_ttft, long_ttft, gaps, tokens_in_window, invalid, ended = [], [], [], [], 0, []
    for _ in range(samples):
        background = Background(server, 7, running_tokens, logit_bias)
        try:
            time.sleep(0.3)  # all 7 in steady decode
            box: dict = {}
            sent = time.perf_counter()
            long = threading.Thread(target=lambda: box.update(server.stream(long_messages(rules), 8, logit_bias)))
            long.start()
            time.sleep(delay)
            short = server.stream(user(f"[{secrets.token_hex(3)}] Quick question"), 8, logit_bias)
            long.join(600)
            still_running = background.running
        finally:
            background.close()
        ended += [o for o in background.outcomes if o != "stopped"]
        if not (box.get("first_at") and short["first_at"]) or short["start"] >= box["first_at"] or not still_running:
            invalid += 1
            continue
        short_ttft.append(short["ttft"])
        long_ttft.append(box["first_at"] - sent)
        gaps += gaps_between(background.times, sent, box["first_at"])
        tokens_in_window.append(min(sum(1 for t in ts if sent <= t <= box["first_at"]) for ts in background.times))
    ms = lambda values, q: 1000 * percentile(values, q)  # noqa: E731
    return {
        "prompt_tokens": (alone["usage"] or {}).get("prompt_tokens"), "long_alone_ttft_ms": 1000 * alone["ttft"],
        "short_delay_ms": 1000 * delay, "samples": len(short_ttft), "invalid_samples": invalid,
        "short_ttft_p50_ms": ms(short_ttft, 0.5), "short_ttft_max_ms": ms(short_ttft, 1.0),
        "long_ttft_p50_ms": ms(long_ttft, 0.5),
        "running_gap_p50_ms": ms(gaps, 0.5), "running_gap_p99_ms": ms(gaps, 0.99), "running_gap_max_ms": ms(gaps, 1.0),
        "running_gaps": len(gaps), "min_tokens_per_running_stream_in_window": tokens_in_window,
        "running_streams_ended_early": ended,
    }  # fmt: skip


def batch_child(model_path: Path) -> None:
    """Child process: `mlx_lm.batch_generate` on the prompts it is sent, one JSON line per batch."""
    from mlx_lm import load
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_logits_processors

    model, tokenizer = load(str(model_path))
    eos = json.loads((model_path / "config.json").read_text())["eos_token_id"]
    processors = make_logits_processors(logit_bias={eos: -100})

    def run(prompts: list[str], max_tokens: int) -> dict:
        tokens = [tokenizer.apply_chat_template(user(p), add_generation_prompt=True) for p in prompts]
        start = time.perf_counter()
        response = batch_generate(model, tokenizer, tokens, max_tokens=max_tokens, logits_processors=processors)
        wall = time.perf_counter() - start
        assert len(response.texts) == len(prompts)
        return {"wall_s": wall, "aggregate_tps": len(prompts) * max_tokens / wall}  # EOS suppressed: max_tokens each

    run([f"[{secrets.token_hex(3)}] {PROMPT}" for _ in range(8)], 8)  # warm up
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        print(json.dumps(run(job["prompts"], job["max_tokens"])), flush=True)


def batch_probe(servers: list[Server], model_path: Path, logit_bias: dict, max_tokens: int, rounds: int) -> dict:
    """Concurrency 8: each server's aggregate tok/s and `batch_generate`'s on the same 8 prompts
    (fresh nonces each round, so no prompt cache helps); the order rotates every round."""
    child = subprocess.Popen([sys.executable, __file__, "--batch-child", str(model_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
        samples: dict[str, list[float]] = {"batch_generate": [], **{s.name: [] for s in servers}}
        for round_ in range(rounds):
            prompts = [f"[{secrets.token_hex(3)}] {PROMPT}" for _ in range(8)]
            contenders = ["batch_generate", *servers]
            for c in contenders[round_ % 3 :] + contenders[: round_ % 3]:
                if c == "batch_generate":
                    child.stdin.write(json.dumps({"prompts": prompts, "max_tokens": max_tokens}) + "\n")
                    child.stdin.flush()
                    samples[c].append(json.loads(child.stdout.readline())["aggregate_tps"])
                else:
                    samples[c.name].append(run_level(c, 8, max_tokens, logit_bias, prompts)["aggregate_tps"])
    finally:
        child.stdin.close()
        child.wait(60)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {"max_tokens": max_tokens, "rounds": rounds, "aggregate_tps": medians, "samples": samples,
            "over_batch_generate": {s.name: medians[s.name] / medians["batch_generate"] for s in servers}}  # fmt: skip


def runner_pids(ours: Server) -> list[int]:
    return [
        m["pid"] for m in requests.get(f"{ours.base}/mlx/api/pool", headers=ours.headers, timeout=10).json()["models"]
    ]


def probe_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    """The `prefill` and `batch` probes on one model: both servers started fresh, side by side."""
    from jupyter_mlx_manager.models.demo import make_demo_model

    hidden, layers = MODELS[name]
    model_path = make_demo_model(work / f"probe-models-{name}" / name, **demo_options(name))
    eos = json.loads((model_path / "config.json").read_text())["eos_token_id"]
    logit_bias = {str(eos): -100}
    result: dict = {"hidden": hidden, "layers": layers, "ours_args": args.ours_arg, "theirs_args": args.theirs_arg}
    ours, theirs, _token = start_servers(work, model_path, name, args.ours_arg, args.theirs_arg)
    servers = [ours, theirs]
    try:
        for server in servers:  # warm up: load, compile
            server.stream(user("warm up"), 8, logit_bias)
            run_level(server, 4, 8, logit_bias)
        result["ours_runner_pids"] = [runner_pids(ours)]
        if "prefill" in args.probes:
            print(f"[{name}] long-prefill probe", file=sys.stderr)
            rounds: dict[str, list[dict]] = {s.name: [] for s in servers}
            for round_ in range(2):  # alternating, so drift hits both alike
                for server in servers if round_ % 2 == 0 else servers[::-1]:
                    rounds[server.name].append(
                        prefill_probe(server, logit_bias, args.prefill_samples, args.prefill_rules, 1200)
                    )
            result["prefill"] = rounds
        if "batch" in args.probes:
            print(f"[{name}] concurrency-8 vs batch_generate probe", file=sys.stderr)
            result["batch"] = batch_probe(servers, model_path, logit_bias, args.max_tokens, args.rounds)
        result["ours_runner_pids"].append(runner_pids(ours))  # the same pid twice: no runner restarted
        if "disk" in args.probes:  # last: it unloads and loads the model (a new runner) on purpose
            print(f"[{name}] prompt cache on disk probe", file=sys.stderr)
            result["disk_cache"] = disk_cache_probe(ours, logit_bias, args.prefill_rules, repeats=3)
        result["logs"] = str(work)
    finally:
        for server in servers:
            stop_server(server)
    return result


def probes_markdown(probes: dict) -> str:
    lines = []
    for name, r in probes.items():
        lines += [
            f"### {name} model (hidden {r['hidden']}, {r['layers']} layers): long prefill, c=8 vs batch_generate, prompt cache on disk",
            "",
        ]
        if "prefill" in r:
            p = {n: rs[0] for n, rs in r["prefill"].items()}
            lines += [f"Long prompt {p[OURS]['prompt_tokens']} tokens while 7 streams decode; a short request "
                      f"arrives during its prefill (ours: {r['ours_args'] or 'defaults, prefill_step_size 512'}; mlx_lm.server: "
                      f"{r['theirs_args'] or 'defaults, prefill step 2048'}).", "",
                      "| probe (round 1 / round 2) | jupyter-mlx-manager | mlx_lm.server | ours/theirs |", "|---|---|---|---|"]  # fmt: skip
            for label, key in (("short request TTFT p50 ms", "short_ttft_p50_ms"), ("short request TTFT max ms", "short_ttft_max_ms"),
                               ("long request TTFT p50 ms", "long_ttft_p50_ms"), ("running streams inter-token p50 ms", "running_gap_p50_ms"),
                               ("running streams inter-token p99 ms", "running_gap_p99_ms"), ("running streams inter-token max ms", "running_gap_max_ms")):  # fmt: skip
                o, t = [x[key] for x in r["prefill"][OURS]], [x[key] for x in r["prefill"][THEIRS]]
                lines.append(f"| {label} | {' / '.join(f'{v:.0f}' for v in o)} | {' / '.join(f'{v:.0f}' for v in t)} | "
                             f"{' / '.join(f'{a / b:.2f}' for a, b in zip(o, t, strict=False))} |")  # fmt: skip
            counts = {n: [x["samples"] for x in rs] for n, rs in r["prefill"].items()}
            lines += [
                "",
                f"Valid samples per round (short request sent before the long one's first token): {counts}.",
                "",
            ]
        if "disk_cache" in r:
            d = r["disk_cache"]
            lines += [f"Prompt cache on disk (ours; medians of {d['repeats']} long prompts): TTFT cold {d['cold_ttft_ms']:.0f} ms, "
                      f"from memory {d['memory_ttft_ms']:.0f} ms, from disk after a reload {d['disk_ttft_ms']:.0f} ms "
                      f"({d['disk_vs_cold']:.2f}× cold). While 4 streams decode, their longest gap during a disk hit "
                      f"{d['streams_max_gap_during_disk_hit_ms']:.0f} ms against a median gap of {d['streams_gap_p50_ms']:.0f} ms "
                      f"(**{d['disk_hit_stall_over_p50']:.1f}×**).", ""]  # fmt: skip
        pids = r.get("ours_runner_pids", [])
        if len(pids) == 2 and pids[0] != pids[1]:
            lines += [f"**Our runner was restarted during the probes** (pids {pids}; logs in {r.get('logs')}).", ""]
        if "batch" in r:
            b = r["batch"]
            a = b["aggregate_tps"]
            lines += [f"Concurrency 8, {b['max_tokens']} tokens each, median of {b['rounds']} rounds on the same prompts: "
                      f"`batch_generate` {a['batch_generate']:.0f} tok/s; ours {a[OURS]:.0f} tok/s "
                      f"(**{b['over_batch_generate'][OURS]:.2f}×** batch_generate); mlx_lm.server {a[THEIRS]:.0f} tok/s "
                      f"({b['over_batch_generate'][THEIRS]:.2f}×); ours/mlx_lm.server {a[OURS] / a[THEIRS]:.2f}.", ""]  # fmt: skip
    return "\n".join(lines)


EDIT_PROMPT = "Rename add to plus in this code:\n" + "def add(a, b):\n    return a + b\n\n" * 8


def speculative_probe(name: str, args: argparse.Namespace, work: Path) -> dict:
    """One greedy stream's tok/s, end to end (median of `--rounds`), on two prompts with the model
    loaded plain, with prompt lookup and with a tiny draft model; each mode's acceptance rate."""
    from jupyter_mlx_manager.models.demo import SIZES, make_demo_model

    folder = work / f"speculative-models-{name}"
    model_path = make_demo_model(folder / name, **demo_options(name))
    make_demo_model(folder / "draft", **{**SIZES["tiny"], "context_length": 8192})
    logit_bias = {str(json.loads((model_path / "config.json").read_text())["eos_token_id"]): -100}
    process, base, headers = our_server(work, folder, "--MLXManager.warm_runner=False")
    server = Server(OURS, f"{base}/mlx/v1/chat/completions", headers, f"local/{name}", process, base)
    modes = {
        "plain": {},
        "prompt_lookup": {"speculative": "prompt_lookup"},
        "draft_model": {"draft_model": "local/draft"},
    }
    result: dict = {"max_tokens": args.max_tokens, "rounds": args.rounds, "modes": {}}
    try:
        for mode, load in modes.items():
            print(f"[{name}] speculative probe: {mode}", file=sys.stderr)
            pool = f"{base}/mlx/api/pool"
            requests.post(
                f"{pool}/load", json={"model": server.model, **load}, headers=headers, timeout=300
            ).raise_for_status()
            server.stream(user("warm up"), 8, logit_bias)
            tps = {}
            for label, prompt in (("edit", EDIT_PROMPT), ("story", PROMPT)):
                runs = [server.stream(user(prompt), args.max_tokens, logit_bias) for _ in range(args.rounds)]
                tps[label] = statistics.median(r["usage"]["completion_tokens"] / (r["end"] - r["start"]) for r in runs)
            again = []
            for _ in range(args.rounds):  # the same long prompt twice: the second is a prompt-cache hit
                messages = long_messages(args.prefill_rules)
                server.stream(messages, 4, logit_bias)
                second = server.stream(messages, 4, logit_bias)
                cached = ((second["usage"] or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
                assert second["ttft"] is not None and cached, f"{mode}: the repeated prompt was not a cache hit"
                again.append(second["ttft"])
            status = requests.get(pool, headers=headers, timeout=10).json()["models"][0]["speculative"]
            result["modes"][mode] = {"decode_tps": tps, "acceptance_rate": status and status["acceptance_rate"],
                                     "repeated_prompt_ttft_ms": 1000 * statistics.median(again)}  # fmt: skip
            requests.post(
                f"{pool}/unload", json={"model": server.model}, headers=headers, timeout=60
            ).raise_for_status()
    finally:
        stop_server(server)
    plain = result["modes"]["plain"]["decode_tps"]
    plain_again = result["modes"]["plain"]["repeated_prompt_ttft_ms"]
    for entry in result["modes"].values():
        entry["speedup"] = {label: entry["decode_tps"][label] / plain[label] for label in plain}
        entry["repeated_prompt_ttft_over_plain"] = entry["repeated_prompt_ttft_ms"] / plain_again
    return result


def speculative_markdown(probes: dict) -> str:
    lines = []
    for name, r in probes.items():
        lines += [f"### {name} model: speculative decoding, one greedy stream of {r['max_tokens']} tokens "
                  f"(median of {r['rounds']}; draft: `demo-model --size tiny`, random weights)", "",
                  "| mode | edit prompt tok/s | speed-up | story prompt tok/s | speed-up | acceptance rate (all) "
                  "| long prompt again: TTFT ms | vs plain |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for mode, m in r["modes"].items():
            rate = "–" if m["acceptance_rate"] is None else f"{m['acceptance_rate']:.2f}"
            lines.append(f"| {mode} | {m['decode_tps']['edit']:.0f} | {m['speedup']['edit']:.2f}× | "
                         f"{m['decode_tps']['story']:.0f} | {m['speedup']['story']:.2f}× | {rate} | "
                         f"{m['repeated_prompt_ttft_ms']:.0f} | {m['repeated_prompt_ttft_over_plain']:.2f}× |")  # fmt: skip
    return "\n".join(lines)


# -- in-process ceiling (child process) -----------------------------------------------------------
def in_process_child(model_path: Path, max_tokens: int) -> None:
    """Child process: mlx-lm without any server. Reads a concurrency per line on stdin, answers
    one JSON line: `stream_generate` for 1, `BatchGenerator` (all prompts at once) for more."""
    from mlx_lm import load, stream_generate
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_logits_processors

    model, tokenizer = load(str(model_path))
    eos = json.loads((model_path / "config.json").read_text())["eos_token_id"]
    processors = make_logits_processors(logit_bias={eos: -100})
    prompts = [
        tokenizer.apply_chat_template(user(f"[{secrets.token_hex(3)}] {PROMPT}"), add_generation_prompt=True)
        for _ in range(8)
    ]

    def single() -> dict:
        start = time.perf_counter()
        first = last = None
        for _response in stream_generate(
            model, tokenizer, prompts[0], max_tokens=max_tokens, logits_processors=processors
        ):
            now = time.perf_counter()
            first = first or now
            last = now
        return {
            "ttft": [first - start],
            "decode_tps": [(max_tokens - 1) / (last - first)],
            "aggregate_tps": max_tokens / (last - start),
        }

    def batched(n: int) -> dict:
        generator = BatchGenerator(model, max_tokens=max_tokens)
        start = time.perf_counter()
        generator.insert([prompts[i % 8] for i in range(n)], logits_processors=[processors] * n)
        first, last = {}, {}
        while len(last) < n:
            for r in generator.next_generated():
                now = time.perf_counter()
                first.setdefault(r.uid, now)
                if r.finish_reason is not None:
                    last[r.uid] = now
        generator.close()
        return {"ttft": [t - start for t in first.values()], "decode_tps": [(max_tokens - 1) / (last[u] - first[u]) for u in last],
                "aggregate_tps": n * max_tokens / (max(last.values()) - start)}  # fmt: skip

    single(), batched(4)  # warm up
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        print(json.dumps(single() if n == 1 else batched(n)), flush=True)


class InProcess:
    name = "in-process mlx-lm"

    def __init__(self, model_path: Path, max_tokens: int):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--in-process", str(model_path), "--max-tokens", str(max_tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout.readline().strip() == "ready"

    def run_level(self, concurrency: int) -> dict:
        self.process.stdin.write(f"{concurrency}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


# -- servers --------------------------------------------------------------------------------------
def start_servers(
    work: Path, model_path: Path, model_name: str, ours_args: list[str] = (), theirs_args: list[str] = ()
) -> tuple[Server, Server, str]:
    token, ours_port, theirs_port = secrets.token_hex(16), free_port(), free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    ours = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True", f"--ServerApp.port={ours_port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", f"--MLXManager.data_dir={work / 'data'}",
         f"--MLXManager.model_dirs={model_path.parent}", "--MLXManager.default_keep_alive=-1", "--MLXManager.owner_username=bench",
         "--MLXManager.max_requests_per_user=16",  # one benchmark user runs 7 + 2 at once (the prefill probe)
         "--ServerApp.log_level=WARN", *ours_args],
        env=env, stdout=open(work / f"ours-{model_name}.log", "ab"), stderr=subprocess.STDOUT,  # warnings, for the record
    )  # fmt: skip
    theirs = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(model_path), "--port", str(theirs_port), "--log-level", "WARNING",
         *theirs_args],
        stdout=open(work / f"theirs-{model_name}.log", "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{ours_port}"
    servers = (
        Server(
            OURS,
            f"{base}/mlx/v1/chat/completions",
            {"Authorization": f"token {token}"},
            f"local/{model_name}",
            ours,
            base,
        ),
        Server(
            THEIRS,
            f"http://127.0.0.1:{theirs_port}/v1/chat/completions",
            {},
            str(model_path),
            theirs,
            f"http://127.0.0.1:{theirs_port}",
        ),
    )
    wait_ready(f"{base}/api/status", servers[0].headers, ours)
    wait_ready(f"http://127.0.0.1:{theirs_port}/v1/models", {}, theirs)
    return servers[0], servers[1], token


# -- load latency ---------------------------------------------------------------------------------
def our_server(work: Path, model_dir: Path, *options: str) -> tuple[subprocess.Popen, str, dict]:
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    data = work / f"data-{secrets.token_hex(3)}"
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", f"--MLXManager.data_dir={data}",
         f"--MLXManager.model_dirs={model_dir}", "--MLXManager.default_keep_alive=-1", "--MLXManager.owner_username=bench",
         "--ServerApp.log_level=WARN", *options],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    wait_ready(f"{base}/api/status", headers, process)
    return process, base, headers


def one_token(url: str, headers: dict, model: str) -> None:
    body = {"model": model, "messages": user("hi"), "max_tokens": 1, "temperature": 0}
    requests.post(url, json=body, headers=headers, timeout=300).raise_for_status()


def ours_load_latency(work: Path, model_path: Path, warm: bool, repeats: int) -> dict:
    """`POST mlx/api/pool/load` → 200 (the runner is ready), then a 1-token chat; unloaded
    between repeats. With the warm runner, each load waits until a spare is ready first."""
    process, base, headers = our_server(work, model_path.parent, f"--MLXManager.warm_runner={warm}")
    model = f"local/{model_path.name}"
    ready, first = [], []
    try:
        for _ in range(repeats):
            deadline = time.monotonic() + 120
            while warm and time.monotonic() < deadline:
                spare = requests.get(f"{base}/mlx/api/pool", headers=headers, timeout=10).json().get("spare")
                if spare and spare.get("ready"):
                    break
                time.sleep(0.05)
            start = time.perf_counter()
            requests.post(
                f"{base}/mlx/api/pool/load", json={"model": model}, headers=headers, timeout=300
            ).raise_for_status()
            ready.append(time.perf_counter() - start)
            one_token(f"{base}/mlx/v1/chat/completions", headers, model)
            first.append(time.perf_counter() - start)
            requests.post(
                f"{base}/mlx/api/pool/unload", json={"model": model}, headers=headers, timeout=60
            ).raise_for_status()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return {"ready_s": statistics.median(ready), "first_token_s": statistics.median(first), "samples": len(ready)}


def theirs_load_latency(model_path: Path, repeats: int) -> dict:
    """`mlx_lm.server --model …` start → first successful `/v1/models`, and → first 1-token chat."""
    ready, first = [], []
    for _ in range(repeats):
        port = free_port()
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm.server", "--model", str(model_path), "--port", str(port), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"mlx_lm.server exited with {process.returncode}")
                try:
                    if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.02)
            ready.append(time.perf_counter() - start)
            one_token(f"http://127.0.0.1:{port}/v1/chat/completions", {}, str(model_path))
            first.append(time.perf_counter() - start)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    return {"ready_s": statistics.median(ready), "first_token_s": statistics.median(first), "samples": len(ready)}


def in_process_load_child(model_path: Path) -> None:
    """Child process: time the imports, `mlx_lm.load` and a first token; one JSON line."""
    started = time.perf_counter()
    from mlx_lm import generate, load

    imported = time.perf_counter()
    model, tokenizer = load(str(model_path))
    loaded = time.perf_counter()
    generate(model, tokenizer, "hi", max_tokens=1)
    print(
        json.dumps(
            {"import_s": imported - started, "load_s": loaded - imported, "first_token_s": time.perf_counter() - loaded}
        )
    )


def in_process_load_latency(model_path: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--load-child", str(model_path)], capture_output=True, text=True,
                             check=True, timeout=300)  # fmt: skip
        run = json.loads(out.stdout.strip().splitlines()[-1])
        run["cold_process_s"] = time.perf_counter() - start  # interpreter start, imports, load, first token
        runs.append(run)
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"samples": len(runs)}


def load_probe(name: str, work: Path, repeats: int) -> dict:
    from jupyter_mlx_manager.models.demo import make_demo_model

    hidden, layers = MODELS[name]
    model_path = make_demo_model(work / f"load-models-{name}" / name, **demo_options(name))
    weights = sum(f.stat().st_size for f in model_path.glob("*.safetensors"))
    print(f"[{name}] load-latency probe", file=sys.stderr)
    return {
        "hidden": hidden, "layers": layers, "weights_bytes": weights,
        "in_process": in_process_load_latency(model_path, repeats),
        "ours_warm": ours_load_latency(work, model_path, True, repeats),
        "ours_cold": ours_load_latency(work, model_path, False, repeats),
        "theirs": theirs_load_latency(model_path, repeats),
    }  # fmt: skip


def load_markdown(loads: dict) -> str:
    lines = ["### Load latency (medians)", "",
             "| model | weights MiB | ours, warm spare: load → ready s | ours, no spare s | mlx_lm.server start → /v1/models s "
             "| in-process mlx_lm.load s | ours warm / mlx_lm.server | ours warm / in-process load | ours cold / ours warm |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in loads.items():
        w, c, t, i = r["ours_warm"], r["ours_cold"], r["theirs"], r["in_process"]
        lines.append(f"| {name} | {r['weights_bytes'] / 2**20:.1f} | {w['ready_s']:.3f} | {c['ready_s']:.3f} | {t['ready_s']:.3f} | "
                     f"{i['load_s']:.3f} | {w['ready_s'] / t['ready_s']:.2f} | {w['ready_s'] / i['load_s']:.2f} | "
                     f"{c['ready_s'] / w['ready_s']:.1f} |")  # fmt: skip
    lines += ["", "| model | to first token s: ours warm | ours no spare | mlx_lm.server (from start) | in-process cold process "
              "(start, imports, load, token) | in-process imports s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in loads.items():
        w, c, t, i = r["ours_warm"], r["ours_cold"], r["theirs"], r["in_process"]
        lines.append(f"| {name} | {w['first_token_s']:.3f} | {c['first_token_s']:.3f} | {t['first_token_s']:.3f} | "
                     f"{i['cold_process_s']:.3f} | {i['import_s']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    from jupyter_mlx_manager.models.demo import make_demo_model

    hidden, layers = MODELS[name]
    model_path = make_demo_model(work / f"models-{name}" / name, **demo_options(name))
    eos = json.loads((model_path / "config.json").read_text())["eos_token_id"]
    logit_bias = {str(eos): -100}
    result: dict = {"hidden": hidden, "layers": layers, "in_process": {}, "servers": {}}

    baseline = InProcess(model_path, args.max_tokens)
    ours, theirs, token = start_servers(work, model_path, name)
    servers = [ours, theirs]
    try:
        for server in servers:  # warm up: load, compile
            server.stream(user("warm up"), 8, logit_bias)
            run_level(server, 4, 8, logit_bias)
        contenders = [baseline, ours, theirs]
        for concurrency in args.concurrency:
            print(f"[{name}] concurrency {concurrency}", file=sys.stderr)
            samples = {c.name: [] for c in contenders}
            for round_ in range(args.rounds):  # the order rotates, so no one always runs first
                for c in contenders[round_ % 3 :] + contenders[: round_ % 3]:
                    sample = (
                        c.run_level(concurrency)
                        if c is baseline
                        else run_level(c, concurrency, args.max_tokens, logit_bias)
                    )
                    samples[c.name].append(sample)
            result["in_process"][str(concurrency)] = summarize(samples[baseline.name])
            for server in servers:
                summary = summarize(samples[server.name])
                summary["decode_vs_in_process"] = (
                    summary["decode_tps_p50"] / result["in_process"][str(concurrency)]["decode_tps_p50"]
                )
                result["servers"].setdefault(server.name, {})[str(concurrency)] = summary
        baseline.close()
        long_tokens = 1900 if name == "tiny" else 1200
        print(f"[{name}] admission probe", file=sys.stderr)
        admission = {s.name: [] for s in servers}
        for round_ in range(2):
            for server in servers if round_ % 2 == 0 else servers[::-1]:
                admission[server.name].append(admission_probe(server, logit_bias, args.probe_samples, long_tokens))
        pooled = {n: [t for r in rs for t in r["ttfts_ms"]] for n, rs in admission.items()}
        result["admission"] = {
            n: {"samples": len(pooled[n]), "ttft_p50_ms": percentile(pooled[n], 0.5), "ttft_p95_ms": percentile(pooled[n], 0.95), "rounds": rs}
            for n, rs in admission.items()
        }  # fmt: skip
        print(f"[{name}] prompt-cache probe", file=sys.stderr)
        result["prompt_cache"] = {s.name: cache_probe(s, logit_bias, args.cache_repeats, rules=17) for s in servers}
        print(f"[{name}] responsiveness probe", file=sys.stderr)
        result["contents"] = contents_probe(ours, token, logit_bias, args.contents_samples, long_tokens)
        pool = requests.get(f"{ours.base}/mlx/api/pool", headers=ours.headers, timeout=10).json()["models"][0]
        result["memory"] = {
            OURS: {"runner_rss_bytes": pool["memory_bytes"], "mlx_active_bytes": pool.get("mlx_active_bytes")},
            THEIRS: {"server_rss_bytes": psutil.Process(theirs.process.pid).memory_info().rss},
        }
    finally:
        for server in servers:
            stop_server(server)
        if baseline.process.poll() is None:
            baseline.process.kill()
    return result


# -- reporting ------------------------------------------------------------------------------------
def markdown_header(results: dict) -> str:
    m = results["machine"]
    return (f"Machine: {m['cpus']} CPUs, {m['platform']}; load average before {m['load_before']}, "
            f"after {m['load_after']}.")  # fmt: skip


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['platform']}; load average before "
             f"{results['machine']['load_before']}, after {results['machine']['load_after']}; max_tokens {results['max_tokens']}, "
             f"rounds {results['rounds']}.", ""]  # fmt: skip
    for name, r in results["models"].items():
        ip = r["in_process"]
        lines += [f"### {name} model (hidden {r['hidden']}, {r['layers']} layers)", "",
                  "| server | conc. | TTFT p50 ms | TTFT p95 ms | decode tok/s p50 | × in-process | aggregate tok/s |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for c, s in ip.items():
            lines.append(f"| in-process mlx-lm | {c} | {s['ttft_p50_ms']:.1f} | {s['ttft_p95_ms']:.1f} | {s['decode_tps_p50']:.0f} | 1.00 | "
                         f"{s['aggregate_tps']:.0f} |")  # fmt: skip
        for server, levels in r["servers"].items():
            for c, s in levels.items():
                lines.append(f"| {server} | {c} | {s['ttft_p50_ms']:.1f} | {s['ttft_p95_ms']:.1f} | {s['decode_tps_p50']:.0f} | "
                             f"{s['decode_vs_in_process']:.2f} | {s['aggregate_tps']:.0f} |")  # fmt: skip
        ours, theirs = r["servers"][OURS], r["servers"][THEIRS]
        lines += [
            "",
            "| conc. | ours/mlx_lm decode | ours/mlx_lm aggregate | ours/mlx_lm TTFT p50 | ours/in-process aggregate |",
            "|---|---|---|---|---|",
        ]
        for c in ours:
            o, t = ours[c], theirs[c]
            lines.append(f"| {c} | {o['decode_tps_p50'] / t['decode_tps_p50']:.2f} | {o['aggregate_tps'] / t['aggregate_tps']:.2f} | "
                         f"{o['ttft_p50_ms'] / t['ttft_p50_ms']:.2f} | {o['aggregate_tps'] / ip[c]['aggregate_tps']:.2f} |")  # fmt: skip
        a = r["admission"]
        lines += ["", "| probe | jupyter-mlx-manager | mlx_lm.server | ours/theirs |", "|---|---|---|---|",
                  f"| admission TTFT p50 ms (short request, 7 long decoding) | {a[OURS]['ttft_p50_ms']:.1f} | {a[THEIRS]['ttft_p50_ms']:.1f} | "
                  f"{a[OURS]['ttft_p50_ms'] / a[THEIRS]['ttft_p50_ms']:.2f} |",
                  f"| admission TTFT p95 ms | {a[OURS]['ttft_p95_ms']:.1f} | {a[THEIRS]['ttft_p95_ms']:.1f} | "
                  f"{a[OURS]['ttft_p95_ms'] / a[THEIRS]['ttft_p95_ms']:.2f} |"]  # fmt: skip
        pc = r["prompt_cache"]
        for label, key in (("cold", "cold_ttft_ms"), ("warm", "warm_ttft_ms")):
            lines.append(f"| prompt cache: {label} TTFT ms ({pc[OURS]['prompt_tokens']} prompt tokens) | {pc[OURS][key]:.1f} | {pc[THEIRS][key]:.1f} | "
                         f"{pc[OURS][key] / pc[THEIRS][key]:.2f} |")  # fmt: skip
        lines.append(
            f"| prompt cache: warm/cold | {pc[OURS]['warm_over_cold']:.3f} | {pc[THEIRS]['warm_over_cold']:.3f} | |"
        )
        m = r["memory"]
        lines.append(f"| memory: RSS MiB (our runner / their server process) | {m[OURS]['runner_rss_bytes'] / 2**20:.0f} | "
                     f"{m[THEIRS]['server_rss_bytes'] / 2**20:.0f} | |")  # fmt: skip
        ct = r["contents"]
        lines += ["", f"`GET api/contents` (ours): idle p50 {ct['idle']['p50_ms']:.1f} ms / p99 {ct['idle']['p99_ms']:.1f} ms; "
                  f"during 8 generations p50 {ct['during_8_generations']['p50_ms']:.1f} ms / p99 {ct['during_8_generations']['p99_ms']:.1f} ms.", ""]  # fmt: skip
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
        return False
    names = list(results["models"])
    fig, axes = plt.subplots(len(names), 3, figsize=(15, 4.2 * len(names)), squeeze=False)
    colors = {OURS: "tab:blue", THEIRS: "tab:orange", "in-process mlx-lm": "tab:gray"}
    for row, name in enumerate(names):
        r = results["models"][name]
        levels = list(r["servers"][OURS])
        ax = axes[row][0]
        width = 0.27
        for k, label in enumerate(["in-process mlx-lm", OURS, THEIRS]):
            values = [
                r["in_process"][c]["aggregate_tps"]
                if label == "in-process mlx-lm"
                else r["servers"][label][c]["aggregate_tps"]
                for c in levels
            ]
            ax.bar([i + (k - 1) * width for i in range(len(levels))], values, width, label=label, color=colors[label])
        ax.set_xticks(range(len(levels)), [f"conc {c}" for c in levels])
        ax.set_ylabel("aggregate tok/s")
        ax.set_title(f"{name}: throughput")
        ax.legend(fontsize=8)
        ax = axes[row][1]
        for k, server in enumerate([OURS, THEIRS]):
            values = [r["servers"][server][c]["ttft_p50_ms"] for c in levels] + [
                r["admission"][server]["ttft_p50_ms"],
                r["admission"][server]["ttft_p95_ms"],
            ]
            ax.bar([i + (k - 0.5) * 0.4 for i in range(len(values))], values, 0.4, label=server, color=colors[server])
        ax.set_xticks(range(len(levels) + 2), [f"conc {c}\np50" for c in levels] + ["admission\np50", "admission\np95"])
        ax.set_ylabel("TTFT ms")
        ax.set_title(f"{name}: time to first token")
        ax.legend(fontsize=8)
        ax = axes[row][2]
        for k, server in enumerate([OURS, THEIRS]):
            pc = r["prompt_cache"][server]
            ax.bar(
                [i + (k - 0.5) * 0.4 for i in range(2)],
                [pc["cold_ttft_ms"], pc["warm_ttft_ms"]],
                0.4,
                label=server,
                color=colors[server],
            )
        ax.set_xticks(range(2), ["cold prefix", "warm prefix"])
        ax.set_ylabel("TTFT ms")
        ct = r["contents"]["during_8_generations"]
        ax.set_title(f"{name}: prompt cache (api/contents p99 {ct['p99_ms']:.0f} ms busy)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--probe-samples", type=int, default=12, help="short requests per admission probe round")
    parser.add_argument("--cache-repeats", type=int, default=5)
    parser.add_argument("--contents-samples", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--probes", nargs="+", choices=["serve", "load", "prefill", "batch", "disk", "speculative"],
        default=["serve", "load", "prefill", "batch", "disk"],
        help="serve: throughput, admission, prompt cache, responsiveness, memory; load: load latency; "
        "prefill: a short request and 7 running streams while a long prompt prefills; batch: c=8 vs batch_generate",
    )  # fmt: skip
    parser.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="prefill/batch probes: an extra option for our server, e.g. --ours-arg=--MLXManager.prefill_step_size=64",
    )
    parser.add_argument(
        "--theirs-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="prefill/batch probes: an extra option for mlx_lm.server, e.g. --theirs-arg=--prefill-step-size=64",
    )
    parser.add_argument("--prefill-samples", type=int, default=4, help="long prompts per prefill probe round")
    parser.add_argument("--prefill-rules", type=int, default=36, help="long prompt: rules of ~47 tokens (36: ~1,700)")
    parser.add_argument("--load-repeats", type=int, default=3, help="loads measured per contender and model")
    parser.add_argument("--in-process", type=Path, help=argparse.SUPPRESS)  # the child-process mode
    parser.add_argument("--load-child", type=Path, help=argparse.SUPPRESS)  # the load-latency child
    parser.add_argument("--batch-child", type=Path, help=argparse.SUPPRESS)  # the batch_generate child
    args = parser.parse_args()

    if args.in_process:
        in_process_child(args.in_process, args.max_tokens)
        return
    if args.load_child:
        in_process_load_child(args.load_child)
        return
    if args.batch_child:
        batch_child(args.batch_child)
        return

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": [round(x, 2) for x in os.getloadavg()]},
        "max_tokens": args.max_tokens, "rounds": args.rounds, "models": {},
    }  # fmt: skip
    if "load" in args.probes:
        results["load"] = {name: load_probe(name, work, args.load_repeats) for name in args.models}
    if "serve" in args.probes:
        for name in args.models:
            results["models"][name] = bench_model(name, args, work)
    if {"prefill", "batch", "disk"} & set(args.probes):
        results["probes"] = {name: probe_model(name, args, work) for name in args.models}
    if "speculative" in args.probes:
        results["speculative"] = {name: speculative_probe(name, args, work) for name in args.models}
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_bench.json").write_text(json.dumps(results, indent=2))
    table = markdown(results) if results["models"] else markdown_header(results)
    if "load" in results:
        table += "\n\n" + load_markdown(results["load"])
    if "probes" in results:
        table += "\n\n" + probes_markdown(results["probes"])
    if "speculative" in results:
        table += "\n\n" + speculative_markdown(results["speculative"])
    (args.out / "serve_bench.md").write_text(table + "\n")
    plotted = plot(results, args.out / "serve_bench.png") if results["models"] else False
    print(table)
    print(
        f"\nwrote {args.out / 'serve_bench.json'}, {args.out / 'serve_bench.md'}"
        + (f", {args.out / 'serve_bench.png'}" if plotted else "")
    )


if __name__ == "__main__":
    main()
