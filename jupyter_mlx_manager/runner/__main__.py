"""`python -m jupyter_mlx_manager.runner [MODEL_PATH] [--kind text|embedding|vision|transcription|speech]
[--prompt-cache-bytes N] [--prefill-step-size N] [--speculative prompt_lookup | --draft-model DRAFT_PATH] …`:
serve one model over stdin/stdout.

`--kind` picks the engine (one of models.kinds.KINDS; models.kinds.model_kind decides, in the
server): mlx-lm's generation engine for text (engine.py), mlx-embeddings' for embedding models
(embedding.py), mlx-vlm's for vision models (vision.py), mlx-audio's for transcription and speech
models (audio.py).

Commands are validated here, on the reader thread, as they arrive (protocol.parse_command): the
engines get typed commands; a refused request is answered with its `error` at once.

Without MODEL_PATH it is a spare: it imports MLX and mlx-lm, says `{"ev": "spare"}` and waits
for `{"op": "load", "path": …}` (the pool's warm runner: a load then skips the imports)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
from pathlib import Path

from ..children import exit_with_server, protocol_streams
from ..models.kinds import KIND_REGISTRY, KINDS
from . import protocol
from .engine import Engine

# The engine built on each package the kind registry names (`Kind.package`); mlx-lm's is Engine.
SERIAL_ENGINES = {
    "mlx_embeddings": (".embedding", "EmbeddingEngine"),
    "mlx_vlm": (".vision", "VisionEngine"),
    "mlx_audio": (".audio", "AudioEngine"),
}


def main() -> None:
    exit_with_server()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_path", type=Path, nargs="?", help="the model folder; none: a spare runner")

    def count(name: str, default: int, what: str) -> None:
        parser.add_argument(name, type=int, default=default, help=f"{what} (default: {default})")

    count("--prompt-cache-bytes", 1 << 30, "byte budget of the prompt (KV prefix) cache; 0 disables it")
    count("--prefill-step-size", 512, "prompt tokens prefilled per scheduler step on every path")
    parser.add_argument("--prompt-cache-dir", type=Path, help="folder of the prompt cache on disk (none: off)")
    count("--prompt-cache-disk-bytes", 0, "byte bound of the prompt cache on disk; 0 turns it off")
    count("--prompt-cache-min-tokens", 1024, "the shortest prefix written to disk, in tokens")
    parser.add_argument(
        "--speculative", choices=["prompt_lookup"],
        help="speculative decoding for lone greedy requests: prompt_lookup (n-gram drafts from the prompt)",
    )  # fmt: skip
    parser.add_argument(
        "--draft-model", type=Path,
        help="speculative decoding for lone greedy requests with this draft model's folder (it shares the "
        "model's tokenizer; loaded in this process)",
    )  # fmt: skip
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="text",
        help="the model's kind (default: text)",
    )
    parser.add_argument(
        "--switch", choices=["migrate", "finish", "batch"], default="migrate",
        help="scheduling when a second request arrives during a direct one (for benchmarks)",
    )  # fmt: skip
    args = parser.parse_args()
    commands, out = protocol_streams()
    write_lock = threading.Lock()

    def emit_many(messages):  # one write for all the events of a decode step
        data = b"".join(protocol.encode(m) for m in messages)
        with write_lock:
            out.write(data)
            out.flush()

    def emit(message: protocol.Event) -> None:
        emit_many([message])

    serial = SERIAL_ENGINES.get(KIND_REGISTRY[args.kind].package)
    if serial is not None and args.model_path is not None:  # a spare is a text runner until told otherwise
        module, name = serial  # imported only for its kind: their packages are optional extras
        engine = getattr(importlib.import_module(module, __package__), name)(args.model_path, emit, args.kind)
    else:
        engine = Engine(
            args.model_path, emit, prompt_cache_bytes=args.prompt_cache_bytes, switch=args.switch,
            emit_many=emit_many, prefill_step_size=max(1, args.prefill_step_size),
            disk_cache={"directory": args.prompt_cache_dir, "max_bytes": max(0, args.prompt_cache_disk_bytes),
                        "min_tokens": args.prompt_cache_min_tokens} if args.prompt_cache_dir else None,
            speculative=args.speculative, draft_path=args.draft_model,
        )  # fmt: skip
    generation = threading.Thread(target=engine.run, name="mlx-generation", daemon=True)
    generation.start()
    stop = threading.Event()
    threading.Thread(target=_heartbeats, args=(engine, emit, stop, generation), name="heartbeat", daemon=True).start()

    for line in commands:  # the server closing our stdin means: exit
        try:
            raw = protocol.decode(line)
        except Exception:  # not JSON (or nested too deep): not a command
            _log(f"skipped an unreadable command line {line[:200]!r}")
            continue
        try:
            command = protocol.parse_command(raw)
        except protocol.Skipped as exc:
            _log(f"skipped {exc}: {line[:200]!r}")
            continue
        except protocol.InvalidCommand as exc:
            error: protocol.ErrorEvent = {"ev": "error", "id": raw["id"], "message": str(exc)[:1000],
                                          "type": "invalid_request_error", "code": exc.code}  # fmt: skip
            if exc.param is not None:
                error["param"] = exc.param
            emit(error)
            continue
        if isinstance(command, protocol.CancelCommand):
            engine.cancelled.add(command.id)
        else:
            engine.inbox.put(command)
            if isinstance(command, protocol.ShutdownCommand):
                break
    engine.inbox.put(protocol.ShutdownCommand())
    stop.set()
    if hasattr(engine, "model"):  # serving: let the generation thread end its step and flush
        generation.join(timeout=10)
    out.flush()  # a spare (or a runner still loading) has nothing to finish: it exits at once
    os._exit(0)  # skip interpreter teardown of MLX objects owned by the generation thread


def _log(message: str) -> None:
    print(f"jupyter_mlx_manager.runner: {message}", file=sys.stderr, flush=True)


def _heartbeats(engine: Engine, emit, stop: threading.Event, generation: threading.Thread) -> None:
    """Every HEARTBEAT_SECONDS from its own thread: memory figures and the generation thread's
    liveness (`progress` moves while it works; `busy` says whether it has work), which the
    server's watchdog reads to find a hung runner."""
    import psutil

    process = psutil.Process()
    while not stop.wait(protocol.HEARTBEAT_SECONDS):
        if not generation.is_alive():  # load failed or shut down: nothing more to serve
            os._exit(0 if hasattr(engine, "model") or engine.model_path is None else 1)
        heartbeat: protocol.HeartbeatEvent = {
            "ev": "heartbeat",
            "rss_bytes": process.memory_info().rss,
            "progress": engine.progress,
            "busy": engine.busy,
            **engine.memory,
        }
        emit(heartbeat)


if __name__ == "__main__":
    main()
