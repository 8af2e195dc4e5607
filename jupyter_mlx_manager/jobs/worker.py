"""One workbench job in its own process: `python -m jupyter_mlx_manager.jobs.worker` reads its
spec (JSON) on stdin and writes JSON lines on the events stream: `{"ev": "progress", …}`
while it works, then `{"ev": "result", …}` or `{"ev": "error", "message"}`.

Like a runner, the job's process holds all its MLX state (a Metal out-of-memory abort takes
only the job), and whatever a library prints goes to stderr, never into the events. The work
is mlx-lm's own: its tuner (`train_model`, datasets, LoRA/DoRA layers, checkpoints), its
loader (`load`, adapters included) and its converter (`convert`, quantization); this module
only feeds them and reports.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..children import exit_with_server, protocol_streams

_events: Any = None


def emit(event: dict[str, Any]) -> None:
    _events.write(json.dumps(event).encode() + b"\n")
    _events.flush()


# -- fine-tune ------------------------------------------------------------------------------------
def finetune(spec: dict[str, Any]) -> dict[str, Any]:
    from mlx_lm import load
    from mlx_lm.lora import CONFIG_DEFAULTS, train_model
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import create_dataset

    model, tokenizer = load(spec["model_path"])
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines() if line.strip()]
    random.Random(spec["seed"]).shuffle(rows)
    held_out = int(len(rows) * spec["val_fraction"])
    if held_out < spec["batch_size"]:
        held_out = 0  # too few rows to validate on: mlx-lm needs a whole batch
    valid_rows, train_rows = rows[:held_out], rows[held_out:]
    if len(train_rows) < spec["batch_size"]:
        raise ValueError(f"the data has {len(train_rows)} training rows; batch_size {spec['batch_size']} needs more")
    out = Path(spec["output_path"])
    args = SimpleNamespace(
        **{
            **CONFIG_DEFAULTS,
            "fine_tune_type": spec["method"],
            "num_layers": spec["num_layers"],
            "batch_size": spec["batch_size"],
            "iters": spec["iters"],
            "learning_rate": spec["learning_rate"],
            "lora_parameters": {"rank": spec["lora_rank"], "dropout": 0.0, "scale": 20.0},
            "adapter_path": str(out),
            "save_every": spec["save_every"],
            "max_seq_length": spec["max_seq_length"],
            "steps_per_report": spec["report_every"],
            "steps_per_eval": spec["eval_every"],
            "val_batches": -1,
            "seed": spec["seed"],
        }
    )
    config = SimpleNamespace(mask_prompt=False)
    train_set = create_dataset(train_rows, tokenizer, config)
    valid_set = create_dataset(valid_rows, tokenizer, config) if valid_rows else []
    started = time.monotonic()
    last: dict[str, Any] = {}

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            done = int(info["iteration"])
            elapsed = time.monotonic() - started
            last.update(train_loss=float(info["train_loss"]))
            emit(
                {
                    "ev": "progress",
                    "iteration": done,
                    "iters": spec["iters"],
                    "train_loss": float(info["train_loss"]),
                    "tokens_per_second": float(info.get("tokens_per_second") or 0),
                    "eta_s": round(elapsed / done * (spec["iters"] - done), 1) if done else None,
                    "peak_memory_bytes": int(float(info.get("peak_memory") or 0) * 1e9),
                }
            )

        def on_val_loss_report(self, info: dict[str, Any]) -> None:
            last.update(val_loss=float(info["val_loss"]))
            emit({"ev": "progress", "iteration": int(info["iteration"]), "iters": spec["iters"],
                  "val_loss": float(info["val_loss"])})  # fmt: skip

    train_model(args, model, train_set, valid_set, Report())
    return {"adapter_path": str(out), "iters": spec["iters"], **last}


# -- evaluate ---------------------------------------------------------------------------------------
def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm import load

    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines() if line.strip()]
    rows = rows[: spec["limit"]] if spec["limit"] else rows
    texts = [r["text"] for r in rows if isinstance(r.get("text"), str)]
    questions = [r for r in rows if isinstance(r.get("question"), str) and isinstance(r.get("choices"), list)]
    table = []
    for number, target in enumerate(spec["models"]):
        model, tokenizer = load(target["path"], adapter_path=target.get("adapter_path"))

        def logprobs_of(tokens: list[int], model: Any = model) -> Any:
            """log p(token i | tokens before it), for i ≥ 1."""
            logits = model(mx.array(tokens)[None])[0, :-1].astype(mx.float32)
            scores = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            return mx.take_along_axis(scores, mx.array(tokens[1:])[:, None], axis=-1)[:, 0]

        row: dict[str, Any] = {"model": target["id"]}
        if "perplexity" in spec["metrics"] and texts:
            total, count = 0.0, 0
            for text in texts:
                tokens = tokenizer.encode(text)[: spec["max_seq_length"]]
                if len(tokens) < 2:
                    continue
                total -= float(logprobs_of(tokens).sum().item())
                count += len(tokens) - 1
            row["perplexity"] = math.exp(total / count) if count else None
            row["tokens"] = count
        if "accuracy" in spec["metrics"] and questions:
            right = 0
            for item in questions:
                context = tokenizer.encode(item["question"])
                scores = []
                for choice in item["choices"]:
                    tokens = context + tokenizer.encode(" " + str(choice), add_special_tokens=False)
                    scores.append(float(logprobs_of(tokens)[len(context) - 1 :].sum().item()))
                best = max(range(len(scores)), key=scores.__getitem__)
                answer = item.get("answer")
                expected = answer if isinstance(answer, int) else item["choices"].index(answer)
                right += best == expected
            row["accuracy"] = right / len(questions)
            row["questions"] = len(questions)
        table.append(row)
        emit({"ev": "progress", "models_done": number + 1, "models": len(spec["models"]), "row": row})
    return {"table": table}


# -- convert ----------------------------------------------------------------------------------------
def convert(spec: dict[str, Any]) -> dict[str, Any]:
    from mlx_lm import convert as mlx_convert

    emit({"ev": "progress", "stage": "converting"})
    quantize = spec.get("quantize")
    partial = Path(spec["output_path"] + ".partial")
    mlx_convert(
        spec["source_path"], mlx_path=str(partial), quantize=quantize is not None,
        q_bits=quantize["bits"] if quantize else None, q_group_size=quantize["group_size"] if quantize else None,
        dtype=spec.get("dtype"),
    )  # fmt: skip
    partial.rename(spec["output_path"])  # whole or not at all: the catalog never sees half a model
    size = sum(f.stat().st_size for f in Path(spec["output_path"]).iterdir() if f.is_file())
    return {"model": spec["model_id"], "size_bytes": size}


JOBS = {"finetune": finetune, "evaluate": evaluate, "convert": convert}


def main() -> None:
    global _events
    exit_with_server()
    commands, _events = protocol_streams()
    spec = json.loads(commands.read())
    try:
        result = JOBS[spec["type"]](spec)
    except Exception as exc:  # reported; the server marks the job failed
        emit({"ev": "error", "message": f"{type(exc).__name__}: {exc}"[:2000]})
        raise SystemExit(1) from None
    emit({"ev": "result", **result})


if __name__ == "__main__":
    main()
