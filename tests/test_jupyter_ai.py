"""jupyter-ai's Jupyternaut answers from a pool model with no hand configuration
(`c.MLXManager.configure_jupyter_ai`): a real `jupyter server` with jupyter-ai 3 installed, a chat
through jupyterlab-chat's WebSocket, Jupyternaut's own LiteLLM call to `mlx/v1`."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import requests
from models import eos_id
from servers import free_port, jupyter_server
from waiting import wait_until

if importlib.util.find_spec("jupyter_ai_jupyternaut") is None:  # not imported here: only the server needs it
    pytest.skip(
        "jupyter-ai's Jupyternaut is not installed (pip install 'jupyter-ai[jupyternaut]')", allow_module_level=True
    )
websocket = pytest.importorskip("websocket")

JUPYTERNAUT = "jupyter-ai-personas::jupyter_ai_jupyternaut::JupyternautPersona"
MODEL = "local/jupyternaut-demo"
PROFILE = "helper"
MINE = {"name": "mine", "model_id": "openai/gpt-4o-mini", "params": {}}  # a user's own custom model
# Jupyternaut's default prompt (its system prompt and tools) is ~20k tokens of the demo tokenizer.
CONTEXT = 32768


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A demo model whose context holds Jupyternaut's prompt (made in a child process: no MLX here)."""
    root = tmp_path_factory.mktemp("jupyternaut-models")
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(root / "models"), "--name", MODEL.removeprefix("local/"), "--context", str(CONTEXT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return root / "models"


@contextlib.contextmanager
def server_with_jupyternaut(root: Path, models: Path, profiles: dict):
    """A server with jupyter-ai's extensions (their defaults), its Jupyter data under `root`,
    these profiles, and our extension's defaults (configure_jupyter_ai on)."""
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "jupyter_server_config.json").write_text(json.dumps({"MLXManager": {"profiles": profiles}}))
    env = {"JUPYTER_DATA_DIR": str(root / "jupyter-data"), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with jupyter_server(
        root,
        "--ServerApp.jpserver_extensions=jupyter_mlx_manager=True",
        "--MLXManager.owner_username=owner",
        f"--MLXManager.model_dirs={models}",
        f"--MCPExtensionApp.mcp_port={free_port()}",  # jupyter-ai's MCP server; not the shared default 3001
        env=env,
    ) as server:
        yield server


def our_models(server) -> list[dict]:
    """Jupyternaut's custom models (its settings API), once this server has written its own URL there."""

    def custom_models() -> list[dict]:
        reply = requests.get(server.url + "api/jupyternaut/config", headers=server.headers, timeout=10)
        assert reply.status_code == 200, reply.text
        return reply.json()["custom_models"]

    return wait_until(
        custom_models,
        "this server's URL in Jupyternaut's custom models",
        timeout=60,
        interval=0.5,
        done=lambda custom: any(e["params"].get("api_base") == server.url + "mlx/v1" for e in custom),
    )


class Events:
    """Jupyter's event stream (`api/events/subscribe`), where personas publish their model lists."""

    def __init__(self, server):
        self.socket = websocket.create_connection(
            server.url.replace("http", "ws", 1) + "api/events/subscribe", header=server.headers, timeout=60
        )
        self.received: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                self.received.append(json.loads(self.socket.recv()))

    def model_options(self, persona: str, wanted: set[str]) -> set[str]:
        """The option ids of the persona's latest model list once it holds `wanted`."""

        def latest() -> set[str]:
            options: set[str] = set()
            for event in list(self.received):
                if event.get("persona_id") == persona and isinstance(event.get("model"), dict):
                    options = {option["id"] for option in event["model"]["options"]}
            return options

        return wait_until(
            latest,
            f"{persona}'s model list to hold {sorted(wanted)}",
            60,
            interval=0.2,
            done=lambda options: wanted <= options,
        )


@pytest.mark.timeout(900)  # Jupyternaut's ~20k-token prompt is prefilled on CPU
def test_jupyternaut_lists_pool_models_and_answers_from_one(tmp_path, models):
    with server_with_jupyternaut(tmp_path, models, {PROFILE: {"model": MODEL, "temperature": 0}}) as server:
        custom = our_models(server)
        by_name = {entry["name"]: entry for entry in custom}
        assert set(by_name) == {MODEL, PROFILE}, custom
        entry = by_name[MODEL]
        assert entry["model_id"] == f"openai/{MODEL}"
        assert by_name[PROFILE]["model_id"] == f"openai/{PROFILE}"
        assert entry["params"]["api_base"] == server.url + "mlx/v1"
        token = entry["params"]["api_key"]
        assert by_name[PROFILE]["params"]["api_key"] == token

        # Jupyternaut's documented config file holds it, for the owner only; the token is one
        # of the owner's API tokens, listed (and revocable) like any other.
        config_file = tmp_path / "jupyter-data" / "jupyter_ai" / "config.json"
        assert config_file.stat().st_mode & 0o777 == 0o600
        assert [e["id"] for e in json.loads(config_file.read_text())["custom_models"]] == [e["id"] for e in custom]
        tokens = requests.get(server.url + "mlx/api/auth/tokens", headers=server.headers, timeout=10).json()
        assert [t["name"] for t in tokens["tokens"]] == ["jupyter-ai"], tokens
        answer = requests.get(server.url + "mlx/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200

        # The picker of a chat's Jupyternaut offers them.
        events = Events(server)
        chat = websocket.create_connection(
            server.url.replace("http", "ws", 1) + "api/chat/ws/jupyternaut.chat", header=server.headers, timeout=600
        )
        assert json.loads(chat.recv())["action"] == "connection"
        ours = {e["id"] for e in custom}
        assert ours <= events.model_options(JUPYTERNAUT, ours)

        # A random-weight demo model would stop at once or ramble: the user's own parameters,
        # saved through Jupyternaut's settings API, make its reply short and never empty. The user
        # also adds a custom model of their own.
        edited = {**entry, "params": {**entry["params"], "temperature": 0, "max_tokens": 8,
                                      "model_kwargs": {"logit_bias": {str(eos_id(models / "jupyternaut-demo")): -100}}}}  # fmt: skip
        saved = requests.post(
            server.url + "api/jupyternaut/config",
            headers=server.headers,
            json={"custom_models": [edited if e["id"] == entry["id"] else e for e in custom] + [MINE]},
            timeout=10,
        )
        assert saved.status_code == 204, saved.text
        assert config_file.stat().st_mode & 0o777 == 0o600  # Jupyternaut's own writes keep it private

        chat.send(json.dumps({
            "type": "client", "action": "send", "id": str(uuid.uuid4()), "body": "Hello, Jupyternaut!",
            "metadata": {"to_persona": JUPYTERNAUT, "model": {"id": entry["id"]}},
        }))  # fmt: skip
        reply, typing, done = "", False, False
        while not done:  # until Jupyternaut has been typing and stops
            frame = json.loads(chat.recv())
            if frame["action"] == "message" and frame["message"]["sender"] == JUPYTERNAUT:
                reply = frame["message"]["body"]
            elif frame["action"] == "writing" and frame["user"]["username"] == JUPYTERNAUT:
                typing |= frame["state"]
                done = typing and not frame["state"]
        chat.close()
        assert reply and not reply.startswith("Error"), reply

        # Our server answered it, as the owner, through the token (the audit trail says so).
        audit = requests.get(
            server.url + "mlx/api/audit", headers=server.headers, params={"model": MODEL}, timeout=10
        ).json()
        served = [r for r in audit["records"] if r["client"] == "api_token" and r["status"] == "ok"]
        assert served and all(r["user"] == "owner" for r in served), audit
        assert [r["completion_tokens"] for r in served] == [8]  # the reply's 8 tokens, as the user's max_tokens says

    assert token not in server.log.read_text()

    # A restart keeps the token and the ids (a chat's choice stays valid) and follows the new port;
    # the user's parameters and own model stay; the profile, gone from the configuration, goes.
    with server_with_jupyternaut(tmp_path, models, {}) as server:
        again = {entry["name"]: entry for entry in our_models(server)}
        assert set(again) == {MODEL, MINE["name"]}
        assert again[MINE["name"]]["model_id"] == MINE["model_id"]
        assert again[MODEL]["id"] == entry["id"]
        assert again[MODEL]["params"]["api_key"] == token
        assert again[MODEL]["params"]["api_base"] == server.url + "mlx/v1"
        assert again[MODEL]["params"]["max_tokens"] == 8
        tokens = requests.get(server.url + "mlx/api/auth/tokens", headers=server.headers, timeout=10).json()
        assert [t["name"] for t in tokens["tokens"]] == ["jupyter-ai"]
    assert token not in server.log.read_text()
