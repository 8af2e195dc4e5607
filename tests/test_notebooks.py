"""The example notebooks, executed (nbclient) in kernels started by a real Jupyter server
with the extension, a local Hub and tiny models; the kernels find the server by themselves."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import requests
from jupyter_client.manager import AsyncKernelManager
from models import build_models
from nbclient import NotebookClient
from servers import jupyter_server

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
HUB_REPO = "demo/tiny-llama"


class _ServerKernel(AsyncKernelManager):
    """A kernel the Jupyter server started (`owns_kernel=False`): nbclient connects to it,
    does not start another, and leaves it running."""

    @property
    def has_kernel(self) -> bool:
        return True


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from jupyter_mlx_manager.devhub import DevHub

    root = tmp_path_factory.mktemp("notebooks")
    models = build_models(root, ["tiny-demo"])
    with DevHub() as hub:
        hub.add_repo(HUB_REPO, models / "tiny-demo", downloads=10, likes=1)
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(root / "hf"),
            "HOME": str(root / "home"),
        }
        args = (f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=-1")
        with jupyter_server(root, *args, env=env) as server:
            yield server


def run_notebook(lab, name: str, parameters: str | None = None, kernel_id: str | None = None) -> nbformat.NotebookNode:
    """Execute a notebook in a kernel started through the server's REST API (kept running)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    if parameters is not None:
        (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        cell.source = parameters
    if kernel_id is None:
        kernel_id = requests.post(
            lab.url + "api/kernels", json={"name": "python3"}, headers=lab.headers, timeout=60
        ).json()["id"]
    km = _ServerKernel(owns_kernel=False, connection_file=str(lab.runtime_dir / f"kernel-{kernel_id}.json"))
    km.load_connection_file()
    NotebookClient(
        nb, km=km, timeout=300, startup_timeout=120, resources={"metadata": {"path": str(lab.root)}}
    ).execute()
    nb.metadata["kernel_id"] = kernel_id
    return nb


def _outputs(nb) -> str:
    return "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def test_quickstart_downloads_loads_and_chats(lab):
    nb = run_notebook(lab, "01-quickstart.ipynb", f'REPO = "{HUB_REPO}"\nMAX_TOKENS = 8')
    text = _outputs(nb)
    assert "'completed'" in text and "chat.completions" in text
    pool = requests.get(lab.url + "mlx/api/pool", headers=lab.headers, timeout=10).json()
    assert HUB_REPO in [m["model"] for m in pool["models"]]


def test_two_kernels_share_one_runner_and_a_restart_does_not_reload(lab):
    a = run_notebook(lab, "02-shared-model-a.ipynb")
    pool = requests.get(lab.url + "mlx/api/pool", headers=lab.headers, timeout=10).json()
    (model,) = [m for m in pool["models"] if m["model"] == "local/tiny-demo"]
    b = run_notebook(lab, "02-shared-model-b.ipynb")
    assert str(model["pid"]) in _outputs(b), "notebook B did not see the runner notebook A loaded"
    assert a.metadata["kernel_id"] != b.metadata["kernel_id"]

    reply = requests.post(lab.url + f"api/kernels/{b.metadata['kernel_id']}/restart", headers=lab.headers, timeout=60)
    assert reply.ok
    run_notebook(lab, "02-shared-model-b.ipynb", kernel_id=b.metadata["kernel_id"])
    pool = requests.get(lab.url + "mlx/api/pool", headers=lab.headers, timeout=10).json()
    (after,) = [m for m in pool["models"] if m["model"] == "local/tiny-demo"]
    assert after["pid"] == model["pid"] and after["requests"] == model["requests"] + 2


def test_openai_sdk_notebook(lab):
    text = _outputs(run_notebook(lab, "03-openai-sdk.ipynb"))
    assert "local/tiny-demo" in text and "CompletionUsage" in text


def test_widgets_notebook(lab):
    text = _outputs(run_notebook(lab, "04-widgets.ipynb"))
    assert "'loaded'" in text
