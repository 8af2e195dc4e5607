"""The example notebooks, executed (nbclient) in kernels started by a real Jupyter server
with the extension, a local Hub and tiny models; the kernels find the server by themselves."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
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
KINDS = ("embedding", "vision", "transcription", "speech")


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


@pytest.fixture(scope="module")
def kinds_lab(tmp_path_factory):
    """A server whose model folder holds a demo model of every kind beyond text, built at once
    in child processes (the test process never imports MLX)."""
    root = tmp_path_factory.mktemp("kinds")
    models = root / "models"
    cli = [sys.executable, "-m", "jupyter_mlx_manager.cli"]
    builds = [
        subprocess.Popen(
            [*cli, "--data-dir", str(root / f"cli-{kind}"), "demo-model", "--dir", str(models), "--kind", kind],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for kind in KINDS
    ]
    for build in builds:
        _, err = build.communicate(timeout=300)
        assert build.returncode == 0, err.decode()[-2000:]
    args = (
        f"--MLXManager.model_dirs={models}",
        "--MLXManager.default_keep_alive=-1",
        f"--MLXManager.max_loaded_models={len(KINDS)}",
    )
    with jupyter_server(root, *args, env={"HOME": str(root / "home")}) as server:
        yield server


@pytest.fixture(scope="module")
def fresh_lab(tmp_path_factory):
    """What a fresh `make run` gives, with no network: demo models of every installed kind made
    by `demo-model --all-kinds --if-missing` in the data folder, the server's defaults
    (`max_loaded_models` 3), and a Hub whose host name does not resolve."""
    root = tmp_path_factory.mktemp("fresh")
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "data"), "demo-model",
         "--all-kinds", "--if-missing"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    env = {"HF_ENDPOINT": "http://nonexistent.invalid", "HF_HOME": str(root / "hf"), "HOME": str(root / "home")}
    with jupyter_server(root, env=env) as server:
        yield server


def test_quickstart_offline_goes_on_with_the_demo_model(fresh_lab):
    nb = run_notebook(fresh_lab, "01-quickstart.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = _outputs(nb)
    assert "the Hub at nonexistent.invalid cannot be reached" in text
    assert "using local/tiny-demo instead" in text and "chat.completions" in text
    status = _cell(nb, "mlx.status()").outputs[0].data
    assert "<table>" in status["text/html"] and "version" in status["text/html"]


@pytest.mark.timeout(300)
def test_beyond_text_on_a_fresh_server_lists_all_its_models(fresh_lab):
    nb = run_notebook(fresh_lab, "05-beyond-text.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    (listing,) = [o for o in _cell(nb, "used = [").outputs if o.output_type == "execute_result"]
    for kind in KINDS:
        assert f"local/tiny-{kind}" in listing.data["text/plain"]
    pool = requests.get(fresh_lab.url + "mlx/api/pool", headers=fresh_lab.headers, timeout=10).json()
    assert len(pool["models"]) <= pool["limits"]["max_loaded_models"] == 3  # eviction made room
    assert "unloaded to make room" in listing.data["text/plain"]


class _Table(HTMLParser):
    """The cells of an HTML table (pandas' `_repr_html_`), row by row, header cells included."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None


def _cell(nb, fragment: str):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and fragment in c.source]
    return cell


@pytest.mark.timeout(240)  # building the four demo models included (about 80 s here)
def test_beyond_text_notebook_embeds_sees_a_figure_and_speaks(kinds_lab):
    ids = {kind: f"local/tiny-{kind}" for kind in KINDS}
    parameters = (
        f'EMBED_MODEL = "{ids["embedding"]}"\nVISION_MODEL = "{ids["vision"]}"\n'
        f'SPEECH_MODEL = "{ids["speech"]}"\nTRANSCRIBE_MODEL = "{ids["transcription"]}"\nMAX_TOKENS = 8'
    )
    nb = run_notebook(kinds_lab, "05-beyond-text.ipynb", parameters)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]

    # The similarity table: one row and one column per sentence, 1.0 on the diagonal.
    (table,) = [o for o in _cell(nb, "pd.DataFrame").outputs if o.output_type == "execute_result"]
    parser = _Table()
    parser.feed(table.data["text/html"])
    header, *rows = [row for row in parser.rows if row]
    assert header == ["", "#0", "#1", "#2", "#3"] and len(rows) == 4
    for i, row in enumerate(rows):
        values = [float(v) for v in row[1:]]
        assert len(values) == 4 and values[i] == pytest.approx(1.0, abs=1e-3)
        assert all(-1.001 <= v <= 1.001 for v in values)

    # The figure is drawn, and the vision model answers about it: a Markdown reply with text.
    assert any("image/png" in o.get("data", {}) for o in _cell(nb, "plt.subplots").outputs)
    (reply,) = [o for o in _cell(nb, "VISION_MODEL,").outputs if o.output_type == "execute_result"]
    assert "text/markdown" in reply.data and "(empty reply)" not in reply.data["text/markdown"]
    assert reply.data["text/plain"].strip("'\"")

    # Speech plays in the notebook: an <audio> element with a WAV.
    (speech,) = [o for o in _cell(nb, "mlx.speak(").outputs if o.output_type == "execute_result"]
    assert "<audio" in speech.data["text/html"] and "audio/wav" in speech.data["text/html"]

    # All four kinds ran in the pool.
    pool = requests.get(kinds_lab.url + "mlx/api/pool", headers=kinds_lab.headers, timeout=10).json()
    assert {m["model"]: m["kind"] for m in pool["models"]} == {model: kind for kind, model in ids.items()}
