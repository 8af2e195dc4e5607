"""The real agents, headless, in their default configuration apart from base URL, key and
model: Claude Code (`claude -p`, Messages), Codex CLI (`codex exec`, Responses) and opencode
(`opencode run`, chat completions) each exit 0 with a reply from a live server.

Their default prompts are long (measured: Claude Code ~62k tokens with its tools, Codex
~27k, opencode ~22k), so the model is a one-layer, 32-wide demo model with a 131,072-token
context: a one-layer model's prefill needs only the keys and values of its one layer (no
attention over the prompt), a fraction of a second here even for Claude Code's prompt.

The CLIs come from npm (`make agent-clis` installs them into build/agents); where they are
not installed the test is skipped. `MLX_AGENT_CLIS` names another folder of their binaries.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import server_config

MODEL = "local/agent-demo"
CONTEXT = 131_072
CLIS = Path(os.environ.get("MLX_AGENT_CLIS") or Path(__file__).parents[1] / "build/agents/node_modules/.bin")
BUILD = """
import sys
from jupyter_mlx_manager.models.demo import make_demo_model
make_demo_model(sys.argv[1], hidden_size=32, num_layers=1, num_heads=2)
"""

pytestmark = pytest.mark.skipif(
    not all((CLIS / name).exists() for name in ("claude", "codex", "opencode")),
    reason=f"the agent CLIs are not installed in {CLIS} (make agent-clis)",
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agents-cli-models") / "models"
    path = folder / MODEL.split("/")[1]
    subprocess.run([sys.executable, "-c", BUILD, str(path)], check=True, capture_output=True, timeout=300)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        config = json.loads((path / name).read_text())
        config[key] = CONTEXT
        (path / name).write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


@pytest.fixture
def agent(api, jp_http_port, jp_base_url, tmp_path):
    """`rc, output = await agent(argv, env, files)`: run a CLI with a fresh HOME, in an empty git
    folder holding `files`, bounded in time; `{MLX_KEY}` (a fresh API token) and `{MLX_BASE}`
    (the server's `…/mlx`) are filled into argv and env."""

    async def run(argv: list[str], env: dict[str, str], files: dict[str, str] | None = None) -> tuple[int, str]:
        token = (await api("POST", "mlx/api/auth/tokens", body={"name": argv[0]})).body["token"]
        home, work = tmp_path / f"home-{argv[0]}", tmp_path / f"work-{argv[0]}"
        home.mkdir()
        work.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=work, check=False)
        for name, text in (files or {}).items():
            (work / name).write_text(text)
        base = f"http://localhost:{jp_http_port}{jp_base_url}mlx"
        values = {"MLX_KEY": token, "MLX_BASE": base}
        environment = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_CACHE_HOME": str(CLIS.parents[1] / "cache"),  # opencode's provider package, fetched once
            "MLX_KEY": token,
            **{k: v.format(**values) for k, v in env.items()},
        }
        process = await asyncio.create_subprocess_exec(
            str(CLIS / argv[0]), *(a.format(**values) for a in argv[1:]), cwd=work, env=environment,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(300):
                output = (await process.communicate())[0].decode(errors="replace")
        except TimeoutError:
            process.kill()
            raise
        return process.returncode, output

    return run


async def _last_record(api, endpoint: str) -> dict:
    records = (await api("GET", "mlx/api/audit", params={"limit": "50"})).body["records"]
    return next(r for r in records if r["endpoint"] and r["endpoint"].endswith(endpoint))


def _answered(rc: int, output: str, record: dict) -> None:
    """The CLI exited 0 after a served request and printed the reply; it prints nothing only when
    the random-weights model's first token was EOS (no tokens: nothing to print, about 1 in 500)."""
    assert rc == 0 and record["status"] == "ok", (record, output[-2000:])
    assert output.strip() or record["completion_tokens"] == 0, (record, output[-2000:])


@pytest.mark.timeout(900)
async def test_claude_code_codex_and_opencode_answer_with_default_settings(agent, api):
    rc, output = await agent(
        ["claude", "-p", "--model", MODEL, "Say hi"],
        {"ANTHROPIC_BASE_URL": "{MLX_BASE}", "ANTHROPIC_API_KEY": "{MLX_KEY}"},
    )
    record = await _last_record(api, "/v1/messages")
    _answered(rc, output, record)
    assert record["prompt_tokens"] > 20_000, record

    provider = 'model_providers.mlx={{name="mlx", base_url="{MLX_BASE}/v1", env_key="MLX_KEY", wire_api="responses"}}'
    rc, output = await agent(
        ["codex", "exec", "--skip-git-repo-check", "-c", "model_provider=mlx", "-c", provider, "-m", MODEL, "Say hi"],
        {},
    )
    record = await _last_record(api, "/v1/responses")
    _answered(rc, output, record)
    assert record["prompt_tokens"] > 10_000, record

    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "mlx": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "MLX",
                "options": {"baseURL": "{env:MLX_BASE}/v1", "apiKey": "{env:MLX_KEY}"},
                "models": {MODEL: {"name": "agent demo"}},
            }
        },
        "model": f"mlx/{MODEL}",
    }
    rc, output = await agent(
        ["opencode", "run", "Say hi"], {"MLX_BASE": "{MLX_BASE}"}, files={"opencode.json": json.dumps(config)}
    )
    record = await _last_record(api, "/v1/chat/completions")
    _answered(rc, output, record)
    assert record["prompt_tokens"] > 10_000, record
