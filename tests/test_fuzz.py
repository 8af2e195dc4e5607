"""schemathesis against a live server: every `mlx/api` and `mlx/v1` operation of our OpenAPI
description, a few hundred generated cases, bounded in time. No 5xx, every response conforms
to its schema (errors included: JSON in the right envelope). And the inference routes' request
schemas say exactly what their parsers accept: a body valid by its schema is never refused with
a 400 (positive mode; an unknown model's 404 comes after every body check).

This file is also schemathesis's hooks module in the positive run (SCHEMATHESIS_HOOKS): what
JSON Schema cannot state, and the schemas say in words, is made true before each call (unique
tool names, a named tool choice naming one of them, real images)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from models import build_models
from servers import jupyter_server

from jupyter_mlx_manager.devhub import DevHub

FUZZ_SECONDS = 100
POSITIVE_SECONDS = 100
INFERENCE_ROUTES = (
    "chat/completions", "completions", "messages", "messages/count_tokens", "responses", "responses/input_tokens",
    "embeddings", "audio/speech",
)  # fmt: skip
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
        "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082"
    )
).decode()
MAX_IMAGES = 8  # c.MLXManager.max_images_per_request's default


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


def test_schema_valid_inference_bodies_are_accepted(server, tmp_path):
    """Positive mode on the inference routes: every refusal of a schema-valid body is a schema
    that says less than its parser checks (ST202)."""
    spec_path = tmp_path / "openapi.json"
    spec_path.write_text(
        json.dumps(requests.get(server.url + "mlx/api/openapi.json", headers=server.headers, timeout=10).json())
    )
    env = {**os.environ, "SCHEMATHESIS_HOOKS": __file__, "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "run", str(spec_path),
            "--url", server.url.rstrip("/"),
            "-H", f"Authorization: token {server.token}",
            "--include-path-regex", f"^/mlx/v1/({'|'.join(INFERENCE_ROUTES)})$",
            "--mode", "positive", "--checks", "positive_data_acceptance",
            "--max-time", str(POSITIVE_SECONDS), "--workers", "1", "--seed", "1",
            "--generation-database", "none", "--request-timeout", "30",
            "--suppress-health-check", "all", "--no-color",
        ],
        capture_output=True, text=True, timeout=POSITIVE_SECONDS + 120, env=env,
    )  # fmt: skip
    output = result.stdout[-12000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "ST202" not in output, output


def made_true(body: Any) -> None:
    """What a body's schema says only in words, made true in place: tool names unique, a named
    tool choice naming one of the tools, each image a real one (at most MAX_IMAGES)."""
    if not isinstance(body, dict):
        return
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    named = []  # every named tool the model sees (a Responses namespace's included)
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        inner = tool.get("tools") if tool.get("type") == "namespace" else [tool]
        for entry in inner if isinstance(inner, list) else []:
            holder = entry.get("function") if isinstance(entry.get("function"), dict) else entry
            if isinstance(holder.get("name"), str) and entry.get("type") in (None, "function", "custom"):
                named.append(holder)
    for i, holder in enumerate(named):  # `_<position>` ends each name: no two alike
        holder["name"] = f"{holder['name'][:56]}_{i}"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom", "tool"):
        target = choice["function"] if isinstance(choice.get("function"), dict) else choice
        if named:
            target["name"] = named[0]["name"]
            choice.pop("namespace", None)
        else:
            body["tool_choice"] = {"type": "auto"} if choice.get("type") == "tool" else "auto"
    images = [0]

    def real(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                real(item)
            return
        if not isinstance(value, dict):
            return
        kind = value.get("type")
        if kind in ("image_url", "input_image", "image") and images[0] >= MAX_IMAGES:
            value.clear()
            value.update({"type": "input_text" if kind == "input_image" else "text", "text": ""})
            return
        if kind == "image_url" and isinstance(value.get("image_url"), dict):
            value["image_url"]["url"], images[0] = f"data:image/png;base64,{PNG}", images[0] + 1
        elif kind == "input_image":
            value["image_url"], images[0] = f"data:image/png;base64,{PNG}", images[0] + 1
        elif kind == "image" and isinstance(value.get("source"), dict):
            value["source"], images[0] = {"type": "base64", "media_type": "image/png", "data": PNG}, images[0] + 1
        for item in value.values():
            real(item)

    real(body.get("messages"))
    real(body.get("input"))


if __name__ == "_schemathesis_hooks":  # loaded by schemathesis (SCHEMATHESIS_HOOKS)
    import schemathesis

    @schemathesis.hook
    def before_call(context, case, kwargs):
        made_true(case.body)
