"""A short request does not wait for another request's long prefill (issue 23, "Prefill fairness").

Through a real server with a small `prefill_step_size` (4 tokens: a ~1,800-token prompt is ~450
chunks): one chat decodes, a long completion is sent, and once the runner has admitted it (its
opening chunk) a short chat is sent. The order of events is asserted, never a duration: the short
request is admitted while the long prompt is still being prefilled, and it streams all its tokens
and ends before the long request's first token; the decoding chat keeps receiving tokens while
the long prompt is prefilled. A short prompt padded into one prefill batch with the long one (or
waiting behind it) would get its first token only when the long prefill ends.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from models import build_models, eos_id
from servers import jupyter_server
from test_long_prefill import ShortStream
from waiting import wait_until_async

MODEL = "local/tiny-demo"
STEP = 4
LONG_PROMPT = [5 + (i * 7919) % 500 for i in range(1800)]  # ordinary token ids (vocab 512, context 2048)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("fairness-models"), ["tiny-demo"])


async def _stream(http: httpx.AsyncClient, path: str, body: dict, times: dict, opened: asyncio.Event | None = None):
    """Stream one request, recording when it was admitted (its opening chunk), its first text and its end."""
    async with http.stream("POST", path, json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                times["done"] = time.monotonic()
                return
            data = json.loads(line[6:])
            assert "error" not in data, data
            times.setdefault("opened", time.monotonic())
            if opened is not None:
                opened.set()
            choice = data["choices"][0] if data.get("choices") else {}
            if "first" not in times and (choice.get("text") or choice.get("delta", {}).get("content")):
                times["first"] = time.monotonic()


async def test_a_short_request_is_served_while_a_long_prompt_prefills(tmp_path, models_dir):
    eos = eos_id(models_dir / "tiny-demo")
    no_eos = {str(eos): -100}
    args = (f"--MLXManager.model_dirs={models_dir}", "--MLXManager.default_keep_alive=-1",
            "--MLXManager.prompt_cache_gb=0", f"--MLXManager.prefill_step_size={STEP}")  # fmt: skip
    with jupyter_server(tmp_path, *args) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as http:
            assert (await http.post("mlx/api/pool/load", json={"model": MODEL})).status_code == 200
            decoding = ShortStream(http, {"model": MODEL, "messages": [{"role": "user", "content": "go on"}],
                                          "max_tokens": 1800, "temperature": 0, "logit_bias": no_eos, "stream": True})  # fmt: skip
            try:

                def decoding_three_tokens() -> bool:
                    assert len(decoding.times) >= 3 or not decoding.ending, decoding.ending
                    return len(decoding.times) >= 3

                await wait_until_async(decoding_three_tokens, "three tokens streamed", timeout=60, interval=0.05)
                long, short, admitted = {}, {}, asyncio.Event()
                long_body = {
                    "model": MODEL,
                    "prompt": LONG_PROMPT,
                    "max_tokens": 4,
                    "temperature": 0,
                    "logit_bias": no_eos,
                }
                long_task = asyncio.ensure_future(_stream(http, "mlx/v1/completions", long_body, long, admitted))
                await asyncio.wait_for(admitted.wait(), 60)
                short_body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                              "temperature": 0, "logit_bias": no_eos}  # fmt: skip
                await asyncio.wait_for(asyncio.gather(_stream(http, "mlx/v1/chat/completions", short_body, short),
                                                      long_task), 120)  # fmt: skip
                ending = decoding.ending
            finally:
                decoding.stop.set()
                await asyncio.wait_for(asyncio.gather(decoding.task, return_exceptions=True), 30)

    assert {"opened", "first", "done"} <= set(long) and {"opened", "first", "done"} <= set(short), (long, short)
    assert short["opened"] < long["first"], "the short request came after the long prefill: nothing was tested"
    assert short["done"] < long["first"], (
        f"the short request waited for the long prefill: short first token {short['first'] - long['opened']:.3f} s, "
        f"done {short['done'] - long['opened']:.3f} s, long first token {long['first'] - long['opened']:.3f} s "
        "after the long request was admitted"
    )
    assert ending is None, f"the decoding stream ended: {ending}"
    during = [t for t in decoding.times if long["opened"] <= t <= long["first"]]
    assert len(during) >= 8, f"the decoding stream got {len(during)} tokens during the long prefill"
    print(f"\nlong prefill {(long['first'] - long['opened']) * 1000:.0f} ms; short request admitted "
          f"{(short['opened'] - long['opened']) * 1000:.0f} ms in, first token {(short['first'] - short['opened']) * 1000:.0f} ms "
          f"after that; decoding stream tokens during the prefill: {len(during)}")  # fmt: skip
