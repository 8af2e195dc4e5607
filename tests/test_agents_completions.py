"""Completions as lm-eval's `local-completions` uses them, with the unmodified `openai` SDK:
batched prompts (strings or token-id lists), `echo` with the prompt's logprobs, and
`max_tokens: 0` scoring. The logprobs must be the model's own log-softmax: a child process
computes it with mlx-lm on the same model (the test process never imports MLX).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys

import openai
import pytest
from conftest import server_config
from models import build_models, eos_id
from test_engine import Runner
from tokenizers import Tokenizer

MODEL = "local/tiny-demo"
PROMPTS = ["The quick brown fox jumps", "Hello! How can I help"]

# The reference: each prompt token's log-probability given the tokens before it.
REFERENCE = """
import json, sys
import mlx.core as mx
from mlx_lm import load
model, _ = load(sys.argv[1])
out = []
for ids in json.loads(sys.argv[2]):
    logits = model(mx.array(ids)[None])[0].astype(mx.float32)
    rows = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    out.append([None] + [rows[i, ids[i + 1]].item() for i in range(len(ids) - 1)])
print(json.dumps(out))
"""


def reference_logprobs(folder, prompts: list[list[int]]) -> list[list[float | None]]:
    """In-process (a child's) log-softmax with mlx-lm over each prompt."""
    done = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(folder), json.dumps(prompts)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("agents-completions-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def sdk(api, jp_http_port, jp_base_url):
    async def make():
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": "lm-eval"})).body["token"]
        return openai.AsyncOpenAI(
            base_url=f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1", api_key=token, max_retries=0
        )

    return make


@pytest.fixture
def tokenizer(models_dir):
    return Tokenizer.from_file(str(models_dir / "tiny-demo" / "tokenizer.json"))


@pytest.fixture
def no_eos(models_dir):
    return {str(eos_id(models_dir / "tiny-demo")): -100}


async def test_batched_prompts_one_choice_each_in_order(sdk, tokenizer, no_eos):
    client = await sdk()
    params = dict(model=MODEL, max_tokens=5, temperature=0, logit_bias=no_eos)
    alone = [(await client.completions.create(prompt=p, **params)).choices[0].text for p in PROMPTS]
    batch = await client.completions.create(prompt=PROMPTS, **params)
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == alone
    assert all(c.finish_reason == "length" for c in batch.choices) and batch.usage.completion_tokens == 10
    ids = [tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    by_ids = await client.completions.create(prompt=ids, **params)
    assert [c.text for c in by_ids.choices] == alone
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids)
    # Streamed: every chunk names its prompt; each prompt's text is the same.
    texts = ["", ""]
    async for chunk in await client.completions.create(prompt=PROMPTS, stream=True, **params):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == alone
    with pytest.raises(openai.BadRequestError):  # an empty prompt among them
        await client.completions.create(prompt=["x", ""], **params)


async def test_echo_scores_the_prompt_with_the_models_log_softmax(sdk, tokenizer, models_dir, no_eos):
    client = await sdk()
    ids = [tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    expected = reference_logprobs(models_dir / "tiny-demo", ids)
    scored = await client.completions.create(model=MODEL, prompt=ids, echo=True, logprobs=3, max_tokens=0)
    assert scored.usage.completion_tokens == 0
    for choice, prompt, prompt_ids, reference in zip(scored.choices, PROMPTS, ids, expected):
        logprobs = choice.logprobs
        assert choice.text == prompt and choice.finish_reason == "length"
        assert len(logprobs.tokens) == len(prompt_ids) and "".join(logprobs.tokens) == prompt
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert logprobs.token_logprobs[1:] == pytest.approx(reference[1:], abs=1e-4)
        assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
        for token, value, top in zip(logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:]):
            assert top[token] == value and len(top) in (3, 4)  # the chosen token is listed too
            assert max(top.values()) >= value

    # Echo with generation (lm-eval's loglikelihood sends max_tokens 1): the prompt's entries,
    # then the output's, text_offset counting on from the prompt.
    both = await client.completions.create(
        model=MODEL, prompt=PROMPTS[0], echo=True, logprobs=1, max_tokens=2, temperature=0, logit_bias=no_eos
    )
    choice = both.choices[0]
    assert choice.text.startswith(PROMPTS[0]) and len(choice.text) > len(PROMPTS[0])
    assert len(choice.logprobs.tokens) == len(ids[0]) + 2
    assert choice.logprobs.token_logprobs[1 : len(ids[0])] == pytest.approx(expected[0][1:], abs=1e-4)
    assert choice.logprobs.text_offset[len(ids[0])] == len(PROMPTS[0])
    # Echo without logprobs: the prompt's text before the output.
    plain = await client.completions.create(
        model=MODEL, prompt=PROMPTS[0], echo=True, max_tokens=2, temperature=0, logit_bias=no_eos
    )
    assert plain.choices[0].text == choice.text and plain.choices[0].logprobs is None
    # Streamed, the prompt comes first.
    chunks = [c async for c in await client.completions.create(
        model=MODEL, prompt=PROMPTS[0], echo=True, logprobs=1, max_tokens=2, temperature=0, logit_bias=no_eos,
        stream=True,
    )]  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    with pytest.raises(openai.BadRequestError):  # nothing to score without echo
        await client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=0)


class _Recorded(queue.Queue):
    """A request's event queue that also notes each event in one arrival order."""

    def __init__(self, order: list, rid: str):
        super().__init__()
        self.order, self.rid = order, rid

    def put(self, item, *args, **kwargs):
        self.order.append((self.rid, item["ev"]))
        super().put(item, *args, **kwargs)


class OrderedRunner(Runner):
    """A runner (tests/test_engine.py) that records the order its events arrive in, across requests."""

    def __init__(self, *args, **kwargs):
        self.order: list[tuple[str, str]] = []
        super().__init__(*args, **kwargs)

    def _queue(self, rid: str) -> queue.Queue:
        with self.lock:
            if rid not in self.events:
                self.events[rid] = _Recorded(self.order, rid)
            return self.events[rid]


def test_scoring_a_long_prompt_does_not_stop_a_decoding_stream(models_dir):
    """Echo scoring goes one `prefill_step_size` chunk per scheduler step, like a prefill: a
    stream that is decoding keeps getting tokens while a long prompt is scored."""
    runner = OrderedRunner(models_dir / "tiny-demo", "--prefill-step-size", "8")
    try:
        runner.submit("decoding", "Hello", max_tokens=1500)  # cancelled: it must outlast the scoring
        assert runner.next_event("decoding")["ev"] == "started"
        assert runner.next_event("decoding")["ev"] == "text"
        runner.submit(
            "scored", "The quick brown fox jumps over the lazy dog. " * 30, echo=True, logprobs=1, max_tokens=0
        )
        _, events = runner.collect("scored")
        assert [e["ev"] for e in events] == ["started", "prompt", "done"]
        assert events[1]["logprobs"][0]["logprob"] is None and len(events[1]["logprobs"]) > 200
        start, end = runner.order.index(("scored", "started")), runner.order.index(("scored", "prompt"))
        between = [ev for rid, ev in runner.order[start:end] if rid == "decoding"]
        assert between.count("text") >= 5, runner.order[start:end]
        runner.send({"op": "cancel", "id": "decoding"})
        assert runner.collect("decoding")[1][-1]["ev"] == "done"
    finally:
        runner.close()
