"""schemathesis against a live server: every `mlx/api` and `mlx/v1` operation of our OpenAPI
description, a few hundred generated cases, bounded in time. No 5xx, every response conforms
to its schema (errors included: JSON in the right envelope)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from models import build_models
from servers import jupyter_server

from jupyter_mlx_manager.devhub import DevHub

FUZZ_SECONDS = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    models = build_models(root, ["tiny-demo"])
    with DevHub() as hub:
        hub.add_repo("mlx-test/tiny", models / "tiny-demo", downloads=3, likes=1)
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(root / "hf"), "HOME": str(root)}
        args = (
            f"--MLXManager.model_dirs={models}",
            "--MLXManager.default_keep_alive=-1",
            "--MLXManager.max_tokens_limit=8",  # generated requests that are valid finish fast
            "--MLXManager.owner_username=owner",
        )
        with jupyter_server(root, *args, env=env) as running:
            yield running


def test_openapi_describes_every_route(server):
    from jupyter_mlx_manager.handlers import ROUTES

    spec = requests.get(server.url + "mlx/api/openapi.json", headers=server.headers, timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    documented = {path.strip("/") for path in spec["paths"]}
    for pattern, _ in ROUTES:
        if pattern.endswith(".*") or pattern.endswith("/ws"):  # the JSON 404 fallbacks; the audit WebSocket
            continue
        template = (
            pattern.replace(r"(\d{1,18})", "{id}")
            .replace("([A-Za-z0-9_-]{1,64})", "{id}")
            .replace("([A-Za-z0-9._:-]{1,64})", "{id}")
            .replace("(.+)", "{id}")
            .removesuffix("/?")
        )
        assert any(_same_shape(template, path) for path in documented), f"{pattern} is not described"


def _same_shape(template: str, path: str) -> bool:
    a, b = template.split("/"), path.split("/")
    return len(a) == len(b) and all(x == y or (x.startswith("{") and y.startswith("{")) for x, y in zip(a, b))


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    spec_path = tmp_path / "openapi.json"
    spec_path.write_text(
        json.dumps(requests.get(server.url + "mlx/api/openapi.json", headers=server.headers, timeout=10).json())
    )
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "run", str(spec_path),
            "--url", server.url.rstrip("/"),
            "-H", f"Authorization: token {server.token}",
            "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples", "25", "--max-time", str(FUZZ_SECONDS), "--workers", "1",
            "--phases", "examples,coverage,fuzzing", "--seed", "1",
            "--generation-database", "none", "--request-timeout", "30",
            "--suppress-health-check", "all", "--no-color",
            "--report", "json", "--report-json-path", str(report),
        ],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 120,
    )  # fmt: skip
    output = result.stdout[-12000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "passed" in output.lower() or "no issues found" in output.lower(), output
