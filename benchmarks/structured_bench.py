"""Structured-output overhead: schema compile time and decode tok/s with vs without a schema.

Makes the tiny demo model (or takes `--model`), then in one run:

* **compile**: llguidance tokenizer build (once per runner) and grammar compile + matcher
  construction per request, for a small and a larger schema and for `json_object`;
* **decode**: a runner process decodes the same number of tokens with and without a JSON
  schema (a long bounded string, so the constrained output has a known length), alone (the
  direct path) and as a batch of 4; tok/s is measured from the first token to `done`.

Reports the figures and the with/without ratios (aim: >= 0.9).

    .venv/bin/python benchmarks/structured_bench.py             # tiny demo model
    .venv/bin/python benchmarks/structured_bench.py --rounds 5 --out structured.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LENGTH = 240  # characters of the constrained string: about as many tokens
SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": LENGTH, "maxLength": LENGTH}},
    "required": ["text"],
    "additionalProperties": False,
}
LARGER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 8},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"enum": ["FR", "DE", "US", "JP"]},
            },
            "required": ["city", "country"],
        },
        "scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}},
        "status": {"anyOf": [{"const": "active"}, {"const": "inactive"}, {"type": "null"}]},
    },
    "required": ["name", "age", "address"],
}


class Runner:
    def __init__(self, model: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_mlx_manager.runner", str(model)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )  # fmt: skip
        self.events: dict[str, queue.Queue] = {}
        self.lock = threading.Lock()
        self.startup: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info = self.startup.get(timeout=120)
        assert self.info["ev"] == "ready", self.info

    def _read(self) -> None:
        for line in self.process.stdout:
            event = json.loads(line)
            event["at"] = time.perf_counter()
            if event["ev"] in ("ready", "failed"):
                self.startup.put(event)
            elif event["ev"] != "heartbeat" and "id" in event:
                self._queue(event["id"]).put(event)

    def _queue(self, rid: str) -> queue.Queue:
        with self.lock:
            return self.events.setdefault(rid, queue.Queue())

    def submit(self, rid: str, **options) -> None:
        self._queue(rid)
        command = {"op": "generate", "id": rid, "kind": "completion", "prompt": "Write: ", "temperature": 1.0,
                   "top_p": 1.0, "seed": 1, "stop": [], **options}  # fmt: skip
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()

    def collect(self, rid: str) -> list[dict]:
        events = []
        while not events or events[-1]["ev"] not in ("done", "error"):
            events.append(self._queue(rid).get(timeout=300))
        return events


def decode_rate(runner: Runner, batch: int, constrained: bool, tag: str) -> float:
    """Tokens per second of the batch, first token to last `done`."""
    eos = runner.info["eos_token_ids"]
    ids = [f"{tag}-{i}" for i in range(batch)]
    for i, rid in enumerate(ids):
        if constrained:
            runner.submit(rid, max_tokens=4 * LENGTH, seed=i, logit_bias={},
                          response_format={"type": "json_schema", "schema": SCHEMA})  # fmt: skip
        else:
            runner.submit(rid, max_tokens=LENGTH, seed=i, logit_bias={str(t): -100 for t in eos})
    results = [runner.collect(rid) for rid in ids]
    for events in results:
        assert events[-1]["ev"] == "done", events[-1]
        if constrained:
            json.loads("".join(e["text"] for e in events if e["ev"] == "text"))
    first = min(next(e["at"] for e in events if e["ev"] == "text") for events in results)
    last = max(events[-1]["at"] for events in results)
    tokens = sum(events[-1]["completion_tokens"] - 1 for events in results)
    return tokens / (last - first)


def compile_times(model: Path, repeats: int) -> dict:
    import mlx.core as mx

    from jupyter_mlx_manager.runner.grammar import Grammars

    config = json.loads((model / "config.json").read_text())
    grammars = Grammars(None, model, {config["eos_token_id"]}, config["vocab_size"])
    began = time.perf_counter()
    grammars.tokenizer()
    out = {"tokenizer_ms": (time.perf_counter() - began) * 1000}
    for name, schema in (("small_schema", SCHEMA), ("larger_schema", LARGER), ("json_object", {"type": "object"})):
        times = []
        for _ in range(repeats):
            grammars._grammars.clear()  # a cold compile every time
            began = time.perf_counter()
            grammars.processor(mx, schema)
            times.append((time.perf_counter() - began) * 1000)
        out[f"{name}_compile_ms"] = statistics.median(times)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model folder (default: make the tiny demo model)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration (median)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from jupyter_mlx_manager.models.demo import make_demo_model

            model = make_demo_model(Path(tmp) / "demo")
        report = {"model": str(model), "compile": compile_times(model, 5)}
        runner = Runner(model)
        try:
            decode_rate(runner, 1, True, "warm-c"), decode_rate(runner, 1, False, "warm-u")
            for batch in (1, 4):
                rates = {"with_schema": [], "without": []}
                for r in range(args.rounds):  # alternate, so drift affects both alike
                    rates["without"].append(decode_rate(runner, batch, False, f"u{batch}-{r}"))
                    rates["with_schema"].append(decode_rate(runner, batch, True, f"c{batch}-{r}"))
                with_schema, without = statistics.median(rates["with_schema"]), statistics.median(rates["without"])
                report[f"batch_{batch}"] = {
                    "tok_s_with_schema": round(with_schema, 1),
                    "tok_s_without": round(without, 1),
                    "ratio": round(with_schema / without, 3),
                }
        finally:
            runner.process.kill()
            runner.process.wait()
    compile_ = report["compile"]
    print(f"llguidance tokenizer build: {compile_['tokenizer_ms']:.1f} ms (once per runner)")
    for name in ("small_schema", "larger_schema", "json_object"):
        print(f"compile {name:14s} {compile_[f'{name}_compile_ms']:.2f} ms")
    for batch in (1, 4):
        row = report[f"batch_{batch}"]
        print(f"batch of {batch}: {row['tok_s_with_schema']} tok/s with schema, {row['tok_s_without']} without: "
              f"ratio {row['ratio']}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
