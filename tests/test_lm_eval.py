"""EleutherAI's lm-eval (`local-completions`, the model's own tokenizer) scores a local
multiple-choice task through `mlx/v1/completions`: its loglikelihood requests (token-id
prompts, batched, `echo` with `logprobs`) come back with the model's own log-softmax, so the
scores it logs equal those computed in-process with mlx-lm.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from conftest import server_config
from models import build_models
from test_agents_completions import reference_logprobs
from tokenizers import Tokenizer

pytest.importorskip("lm_eval")  # the test extra

MODEL = "local/tiny-demo"
QUESTIONS = [
    {"question": "The quick brown fox jumps over the", "choices": [" lazy dog.", " moon.", " fence."], "answer": 0},
    {"question": "Jupyter notebooks mix code, text and", "choices": [" results.", " soup.", " rain."], "answer": 0},
    {"question": "MLX is an array framework for", "choices": [" cooking.", " machine learning."], "answer": 1},
    {"question": "Hello! How can I help you", "choices": [" today?", " yesterday?"], "answer": 0},
]
TASK = """
task: mlx_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("lm-eval-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.mark.timeout(600)
async def test_lm_eval_scores_a_multiple_choice_task_with_the_models_logprobs(
    api, jp_http_port, jp_base_url, models_dir, tmp_path
):
    folder = models_dir / "tiny-demo"
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    data = task_dir / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (task_dir / "mlx_tiny_choice.yaml").write_text(TASK.format(data=data))
    token = (await api("POST", "mlx/api/auth/tokens", body={"name": "lm-eval"})).body["token"]
    url = f"http://localhost:{jp_http_port}{jp_base_url}mlx/v1/completions"
    model_args = (
        f"model={MODEL},base_url={url},tokenizer_backend=huggingface,tokenizer={folder},"
        "num_concurrent=1,max_retries=1,max_length=2048"
    )
    env = {**os.environ, "OPENAI_API_KEY": token, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "out"
    # A child process: lm-eval's HTTP client blocks, and this process's event loop is the server's.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
        "--batch_size", "2", "--tasks", "mlx_tiny_choice", "--include_path", str(task_dir), "--output_path", str(out), "--log_samples",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    log = (await process.communicate())[0].decode(errors="replace")
    assert process.returncode == 0, log[-4000:]

    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["mlx_tiny_choice"]
    assert 0 <= results["acc,none"] <= 1
    samples = [json.loads(line) for path in out.rglob("samples_mlx_tiny_choice_*.jsonl") for line in path.open()]
    assert sorted(s["doc_id"] for s in samples) == list(range(len(QUESTIONS)))

    # Each choice's loglikelihood as lm-eval encodes it (context + continuation, split after
    # the context's tokens), from log-softmax computed in-process.
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pairs, prompts = [], []
    for sample in samples:
        for index, argument in enumerate(sample["arguments"].values()):
            context, continuation = argument["arg_0"], argument["arg_1"]
            context_ids = tokenizer.encode(context, add_special_tokens=False).ids
            whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
            pairs.append((sample, index, len(context_ids)))
            prompts.append(whole)
    expected = reference_logprobs(folder, prompts)
    for (sample, index, context_length), reference in zip(pairs, expected):
        loglikelihood = float(sample["resps"][index][0][0])  # the samples file holds it as text
        assert loglikelihood == pytest.approx(sum(reference[context_length:]), abs=1e-3), sample["doc"]
        assert loglikelihood < 0
