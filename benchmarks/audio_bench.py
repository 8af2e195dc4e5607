"""Transcription: our `mlx/v1/audio/transcriptions` (server → pool → runner) vs mlx-audio in-process.

On the demo Whisper (`demo-model --kind transcription`) it measures load time (ours:
`POST mlx/api/pool/load` until ready, which includes the runner's warm-up request; in-process:
`mlx_audio.stt.utils.load_model` after the imports, and a whole cold process) and the real-time
factor (seconds of compute per second of audio; lower is better) on a generated tone of
`--seconds`, at temperature 0 on both sides, after one warm-up request each.

    .venv/bin/python benchmarks/audio_bench.py [--seconds 10] [--requests 5]

Prints a markdown table and writes JSON to `--out` if given. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import requests
from embeddings_bench import our_server

IN_PROCESS = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from mlx_audio.stt.utils import load_model
t1 = time.perf_counter()
model = load_model(sys.argv[1])
t2 = time.perf_counter()
seconds, n = float(sys.argv[2]), int(sys.argv[3])
audio = (0.25 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
model.generate(audio, temperature=0.0, verbose=None)
start = time.perf_counter()
for _ in range(n):
    model.generate(audio, temperature=0.0, verbose=None)
rtf = (time.perf_counter() - start) / n / seconds
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "cold_s": t2 - t0, "rtf": rtf}))
"""


def tone_wav(seconds: float) -> bytes:
    frames = b"".join(
        int(8000 * math.sin(2 * math.pi * 440 * i / 16000)).to_bytes(2, "little", signed=True)
        for i in range(int(seconds * 16000))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(frames)
    return out.getvalue()


def ours(base: str, headers: dict, model: str, seconds: float, n: int) -> dict:
    start = time.perf_counter()
    requests.post(f"{base}/mlx/api/pool/load", json={"model": model}, headers=headers, timeout=300).raise_for_status()
    load = time.perf_counter() - start
    audio, session = tone_wav(seconds), requests.Session()

    def transcribe():
        form = {"model": model, "temperature": "0"}
        reply = session.post(
            f"{base}/mlx/v1/audio/transcriptions", data=form, files={"file": ("t.wav", audio)}, headers=headers,
            timeout=300,
        )  # fmt: skip
        reply.raise_for_status()

    transcribe()
    start = time.perf_counter()
    for _ in range(n):
        transcribe()
    return {"load_s": load, "rtf": (time.perf_counter() - start) / n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test audio (default 10 s)")
    parser.add_argument("--requests", type=int, default=5, help="timed requests per side (default 5)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audio-bench-"))
    models = work / "models"
    code = "import sys; from jupyter_mlx_manager.models.demo import make_demo_transcription_model as m; m(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(models / "bench-whisper")], check=True)
    child = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(models / "bench-whisper"), str(args.seconds), str(args.requests)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    results = {"in_process": json.loads(child.stdout.strip().splitlines()[-1])}
    process, base, headers = our_server(work, models)
    try:
        results["ours"] = ours(base, headers, "local/bench-whisper", args.seconds, args.requests)
    finally:
        process.terminate()
        process.wait(30)
    o, p = results["ours"], results["in_process"]
    print(
        "| model | load: ours (pool/load, with warm-up) | load: in-process (after imports / cold) | RTF: ours / in-process |"
    )
    print("|---|---|---|---|")
    print(
        f"| demo Whisper, {args.seconds:g} s audio | {o['load_s']:.2f} s | {p['load_s']:.2f} s / {p['cold_s']:.2f} s "
        f"| {o['rtf']:.3f} / {p['rtf']:.3f} |"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
