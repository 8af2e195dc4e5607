"""A long prompt does not freeze the other streams of its runner (issue 13, "Fault injection").

Through a real server with `prefill_step_size=64`: 7 short streaming chats decode (fixed
length: EOS suppressed with `logit_bias`), then one request with a ~1,800-token prompt
arrives. What a user would notice is asserted, never a duration: every one of the 7 streams
keeps receiving tokens between the moment the long request is sent and the moment its first
token arrives, and during its prefill proper (from its opening chunk, sent when the runner
admitted it, to its first token: ~28 chunks with a decode step of the batch between chunks)
each stream gets at least a quarter as many tokens as there are chunks; the long request
completes on the same runner. The inter-token gaps of the 7 streams in those windows are
printed (p50/p99) for the issue note, not asserted.

The runner-level ordering (over its protocol, on every switching mode) is in
`test_runner_faults.py::test_a_short_request_streams_while_a_long_prompt_prefills`.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from models import build_models, eos_id
from servers import jupyter_server
from waiting import wait_until_async

MODEL = "local/tiny-demo"
STEP = 64
LONG_PROMPT = [5 + (i * 7919) % 500 for i in range(1800)]  # ordinary token ids (vocab 512, context 2048)
SHORT = 7
# Between the long request's admission (its opening chunk: the runner has said `started`) and its
# first token, ~28 chunks interleaved with decode steps give each stream about one token per
# chunk (measured: 31-46); a prefill in one step lets through only what was already on the wire
# (measured with prefill_step_size=2048: 3). A count, not a duration.
MIN_TOKENS_IN_WINDOW = len(LONG_PROMPT) // STEP // 4


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("prefill-models"), ["tiny-demo"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


class ShortStream:
    """A streaming chat that records when each chunk of output arrived, until told to stop."""

    def __init__(self, http: httpx.AsyncClient, body: dict):
        self.times: list[float] = []
        self.ending: str | None = None
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(http, body))

    async def _run(self, http: httpx.AsyncClient, body: dict) -> None:
        try:
            async with http.stream("POST", "mlx/v1/chat/completions", json=body) as reply:
                if reply.status_code != 200:
                    self.ending = f"HTTP {reply.status_code}: {(await reply.aread())[:300]!r}"
                    return
                async for line in reply.aiter_lines():
                    if self.stop.is_set():
                        self.ending = "stopped"
                        return
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        self.ending = "done"
                        return
                    data = json.loads(line[6:])
                    if "error" in data:
                        self.ending = f"error: {data['error']}"
                        return
                    delta = data["choices"][0].get("delta", {}) if data.get("choices") else {}
                    if any(value for key, value in delta.items() if key != "role"):  # text, reasoning or a tool call
                        self.times.append(time.monotonic())
        except httpx.HTTPError as exc:
            self.ending = f"transport: {exc!r}"
        self.ending = self.ending or "cut"


async def _long_request(http: httpx.AsyncClient, eos: int) -> dict:
    """The long completion (token ids as the prompt): when its first token came, its usage."""
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 4, "temperature": 0, "logit_bias": {str(eos): -100},
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    opened, first, usage, finish, done = None, None, None, None, False
    async with http.stream("POST", "mlx/v1/completions", json=body) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            data = json.loads(line[6:])
            assert "error" not in data, data
            usage = data.get("usage") or usage
            if opened is None:  # the opening chunk: sent once the runner has admitted the request
                opened = time.monotonic()
            if data.get("choices"):
                finish = data["choices"][0].get("finish_reason") or finish
                if first is None and data["choices"][0].get("text"):
                    first = time.monotonic()
    return {"opened": opened, "first": first, "usage": usage, "finish": finish, "done": done}


def _report(label: str, streams: list[ShortStream], start: float, end: float) -> list[int]:
    """Print the tokens each short stream got in [start, end] and their inter-token gaps there."""
    counts = [sum(1 for t in s.times if start <= t <= end) for s in streams]
    gaps = [b - a for s in streams for a, b in zip(s.times, s.times[1:], strict=False) if a >= start and b <= end]
    print(
        f"  {label}: {(end - start) * 1000:.0f} ms; tokens per short stream {counts}; inter-token gaps "
        f"p50 {1000 * percentile(gaps, 0.5):.1f} ms, p99 {1000 * percentile(gaps, 0.99):.1f} ms, "
        f"max {1000 * max(gaps, default=float('nan')):.1f} ms (n={len(gaps)})"
    )
    return counts


async def test_a_long_prefill_does_not_freeze_seven_decoding_streams(tmp_path, models_dir):
    eos = eos_id(models_dir / "tiny-demo")
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1",
            f"--MLXManager.prefill_step_size={STEP}")  # fmt: skip
    with jupyter_server(tmp_path, *args) as server:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120, limits=limits) as http:
            loaded = await http.post("mlx/api/pool/load", json={"model": MODEL})
            assert loaded.status_code == 200, loaded.text
            streams = [
                ShortStream(http, {"model": MODEL, "messages": [{"role": "user", "content": f"short {i}"}],
                                   "max_tokens": 1500, "temperature": 0, "logit_bias": {str(eos): -100}, "stream": True})
                for i in range(SHORT)
            ]  # fmt: skip
            try:

                def progress() -> list[tuple[int, str | None]]:
                    seen = [(len(s.times), s.ending) for s in streams]
                    assert all(n >= 3 for n, _ in seen) or not any(ending for _, ending in seen), seen
                    return seen

                await wait_until_async(
                    progress,
                    f"all {SHORT} streams decoding in the batch",
                    timeout=60,
                    interval=0.05,
                    done=lambda seen: all(n >= 3 for n, _ in seen),
                )
                sent = time.monotonic()
                long = await asyncio.wait_for(_long_request(http, eos), 120)
                endings = [s.ending for s in streams]
            finally:
                for s in streams:
                    s.stop.set()  # each leaves at its next line, closing its stream (a cancel)
                try:
                    await asyncio.wait_for(asyncio.gather(*(s.task for s in streams), return_exceptions=True), 30)
                except TimeoutError:
                    pass
        pool = httpx.get(server.url + "mlx/api/pool", headers=server.headers, timeout=10).json()["models"]

    assert long["done"] and long["finish"] == "length", long
    assert long["usage"]["prompt_tokens"] == len(LONG_PROMPT) and long["usage"]["completion_tokens"] == 4, long
    assert long["first"] is not None, long
    assert endings == [None] * SHORT, f"a short stream ended while the long prompt prefilled: {endings}"
    assert long["opened"] is not None and sent <= long["opened"] <= long["first"], long
    print(f"\nlong prompt {len(LONG_PROMPT)} tokens, prefill_step_size {STEP} (~{len(LONG_PROMPT) // STEP} chunks):")
    sent_counts = _report("sent → first token", streams, sent, long["first"])
    counts = _report("admitted → first token (the prefill)", streams, long["opened"], long["first"])
    assert all(c > 0 for c in sent_counts), f"a stream froze while the long request was served: {sent_counts}"
    assert all(c >= MIN_TOKENS_IN_WINDOW for c in counts), (
        f"streams froze while the long prompt prefilled: tokens per stream during the prefill {counts}"
    )
    assert [m["pid"] for m in pool] == [loaded.json()["pid"]], pool  # the same runner served it all
