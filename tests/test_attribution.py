"""The notebook behind each request: a kernel's id and cell id (X-MLX-Kernel-Id, X-MLX-Cell-Id),
checked against the server's own sessions, land in the audit as `notebook`, `kernel_id` and
`cell_id`; a kernel id that is not one of the caller's sessions is ignored entirely."""

from __future__ import annotations

import uuid

import nbformat
import pytest
import requests
from conftest import OWNER, server_config
from models import build_models, eos_id
from servers import jupyter_server

MODEL = "local/tiny-demo"
NOTEBOOK = "work/analysis.ipynb"


@pytest.fixture(scope="module")
def attribution_models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("attribution-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(attribution_models):
    return server_config(attribution_models, default_keep_alive=-1)


def _chat(models, tokens=2):
    return {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "temperature": 0,
        "logit_bias": {str(eos_id(models / "tiny-demo")): -100},
    }  # fmt: skip


async def _session(api, jp_root_dir, path: str) -> dict:
    """A notebook session through the server's REST API: the server starts its kernel."""
    (jp_root_dir / path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(), jp_root_dir / path)
    reply = await api(
        "POST", "api/sessions", body={"path": path, "type": "notebook", "name": "", "kernel": {"name": "python3"}}
    )
    assert reply.code == 201, reply.body
    return reply.body


async def _record(api, reply, auth="jupyter"):
    records = (await api("GET", "mlx/api/audit", auth=auth, params={"limit": "1000"})).body["records"]
    (record,) = [r for r in records if r["request_id"] == reply.headers["X-Request-ID"]]
    return record


async def test_a_sessions_kernel_names_its_notebook_and_others_are_ignored(
    api, jp_root_dir, attribution_models, make_user
):
    session = await _session(api, jp_root_dir, NOTEBOOK)
    kernel_id = session["kernel"]["id"]
    cell = "c0ffee-cell_1"
    try:
        # The kernel's own request (the Jupyter token): the notebook, the kernel and the cell.
        headers = {"X-MLX-Kernel-Id": kernel_id, "X-MLX-Cell-Id": cell}
        reply = await api("POST", "mlx/v1/chat/completions", body=_chat(attribution_models), headers=headers)
        assert reply.code == 200, reply.body
        record = await _record(api, reply)
        assert (record["notebook"], record["kernel_id"], record["cell_id"]) == (NOTEBOOK, kernel_id, cell)
        assert record["client"] == "kernel" and record["user"] == OWNER

        # /v1/completions (the inline completer's endpoint) too; a malformed cell id is dropped alone.
        body = {"model": MODEL, "prompt": "def fib(", "max_tokens": 2}
        bad_cell = {"X-MLX-Kernel-Id": kernel_id, "X-MLX-Cell-Id": "no spaces; or 'quotes'"}
        reply = await api("POST", "mlx/v1/completions", body=body, headers=bad_cell)
        assert reply.code == 200, reply.body
        record = await _record(api, reply)
        assert (record["notebook"], record["kernel_id"], record["cell_id"]) == (NOTEBOOK, kernel_id, None)

        # A kernel id that is no session (a random uuid, a malformed one): nothing recorded.
        for stranger in (str(uuid.uuid4()), "../../etc/passwd", "x" * 65):
            headers = {"X-MLX-Kernel-Id": stranger, "X-MLX-Cell-Id": cell}
            reply = await api("POST", "mlx/v1/chat/completions", body=_chat(attribution_models), headers=headers)
            assert reply.code == 200, reply.body
            record = await _record(api, reply)
            assert (record["notebook"], record["kernel_id"], record["cell_id"]) == (None, None, None), stranger

        # Another user of ours (a JWT) naming the owner's kernel: not their session, ignored.
        _, alice = await make_user("alice")
        headers = {"X-MLX-Kernel-Id": kernel_id, "X-MLX-Cell-Id": cell}
        reply = await api(
            "POST", "mlx/v1/chat/completions", auth=alice, body=_chat(attribution_models), headers=headers
        )
        assert reply.code == 200, reply.body
        record = await _record(api, reply)
        assert record["user"] == "alice"
        assert (record["notebook"], record["kernel_id"], record["cell_id"]) == (None, None, None)
        # ... while the owner's own API token is the server's user: attributed.
        owner_token = (await api("POST", "mlx/api/auth/tokens", body={"name": "owner"})).body["token"]
        reply = await api(
            "POST", "mlx/v1/chat/completions", auth=owner_token, body=_chat(attribution_models), headers=headers
        )
        record = await _record(api, reply)
        assert record["client"] == "api_token" and record["notebook"] == NOTEBOOK

        # Once the session is gone, its kernel id names nothing.
        assert (await api("DELETE", f"api/sessions/{session['id']}")).code == 204
        reply = await api("POST", "mlx/v1/chat/completions", body=_chat(attribution_models), headers=headers)
        assert (await _record(api, reply))["notebook"] is None
    finally:
        await api("DELETE", f"api/sessions/{session['id']}")


async def test_notebook_filter_and_grouped_stats(api, mlx_app, make_user):
    rows = [
        ("owner", "a.ipynb", "m/1", 10, 5, 100.0),
        ("owner", "a.ipynb", "m/2", 20, 7, 50.0),
        ("owner", "b.ipynb", "m/1", 1, 1, 10.0),
        ("carol", None, "m/1", 3, 2, 5.0),
    ]
    for user, notebook, model, prompt, completion, duration in rows:
        await mlx_app.audit.record(
            "chat.completions", user=user, model=model, endpoint="/mlx/v1/chat/completions", notebook=notebook,
            kernel_id="k-1" if notebook else None, prompt_tokens=prompt, completion_tokens=completion,
            duration_ms=duration,
        )  # fmt: skip
    await mlx_app.audit.record("auth.login", user="owner")  # no endpoint: not a request in the groups

    only_a = (await api("GET", "mlx/api/audit", params={"notebook": "a.ipynb"})).body
    assert only_a["total"] == 2 and {r["notebook"] for r in only_a["records"]} == {"a.ipynb"}
    assert (await api("GET", "mlx/api/audit", params={"notebook": "nope.ipynb"})).body["total"] == 0
    assert (await api("GET", "mlx/api/audit", params={"notebook": "x" * 2000})).code == 400

    groups = (await api("GET", "mlx/api/audit/stats", params={"group_by": "notebook"})).body["groups"]
    assert groups[0] == {
        "key": "a.ipynb", "requests": 2, "prompt_tokens": 30, "completion_tokens": 12, "duration_ms": 150.0,
        "cached_tokens": 0, "audio_seconds": 0,
    }  # fmt: skip
    assert {g["key"]: g["requests"] for g in groups} == {"a.ipynb": 2, "b.ipynb": 1, None: 1}
    by_user = (await api("GET", "mlx/api/audit/stats", params={"group_by": "user"})).body["groups"]
    assert {g["key"]: g["requests"] for g in by_user} == {"owner": 3, "carol": 1}
    by_model = (await api("GET", "mlx/api/audit/stats", params={"group_by": "model", "notebook": "a.ipynb"})).body
    assert {g["key"]: g["completion_tokens"] for g in by_model["groups"]} == {"m/1": 5, "m/2": 7}
    assert (await api("GET", "mlx/api/audit/stats", params={"group_by": "time"})).code == 400
    assert "by_status" in (await api("GET", "mlx/api/audit/stats")).body  # without group_by: as before

    # A user's groups hold only their own requests.
    _, dave = await make_user("dave")
    assert (await api("GET", "mlx/api/audit/stats", auth=dave, params={"group_by": "notebook"})).body["groups"] == []

    # Exports carry the new columns (and stay formula-safe).
    await mlx_app.audit.record("chat.completions", user="owner", endpoint="/x", notebook="=cmd|'/c calc'!A1.ipynb")
    ticket = (await api("POST", "mlx/api/auth/ticket")).body["token"]
    as_csv = await api("GET", "mlx/api/audit/export", auth=None, params={"format": "csv", "token": ticket})
    header, *lines = as_csv.body.splitlines()
    assert header.split(",")[-3:] == ["notebook", "kernel_id", "cell_id"]
    assert any("'=cmd" in line for line in lines) and not any(",=cmd" in line for line in lines)


async def test_text_fields_are_bounded(mlx_app):
    record = await mlx_app.audit.record("x", notebook="n" * 5000, kernel_id="k" * 500, cell_id="c" * 500)
    assert len(record["notebook"]) == 1024 and len(record["kernel_id"]) == 64 and len(record["cell_id"]) == 64


# -- end to end: a notebook executed in a kernel the server started ------------------------------


def test_a_notebook_run_in_a_server_session_is_named_in_the_audit(tmp_path):
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    class ServerKernel(AsyncKernelManager):
        @property
        def has_kernel(self) -> bool:
            return True

    class LabLikeClient(NotebookClient):
        """Sends each cell's id in the execute request's metadata, as JupyterLab does."""

        cell_id = None

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            original = kc.session.msg

            def msg(msg_type, content=None, parent=None, header=None, metadata=None):
                if msg_type == "execute_request":
                    metadata = {**(metadata or {}), "cellId": self.cell_id}
                return original(msg_type, content, parent, header, metadata)

            kc.session.msg = msg
            return kc

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            self.cell_id = cell.get("id")
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    models = build_models(tmp_path, ["tiny-demo"])
    path = "projects/e2e.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from jupyter_mlx_manager.client import connect\nmlx = connect()"),
        nbformat.v4.new_code_cell(f'reply = mlx.chat("{MODEL}", "hi", max_tokens=2)\nprint(len(reply) >= 0)'),
        nbformat.v4.new_code_cell(f'print([m for m in mlx.map("{MODEL}", ["a", "b"], max_tokens=1, progress=False)])'),
    ]
    (tmp_path / path).parent.mkdir(parents=True)
    nbformat.write(nb, tmp_path / path)
    args = (f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=-1")
    with jupyter_server(tmp_path, *args, env={"HOME": str(tmp_path / "home")}) as server:
        session = requests.post(
            server.url + "api/sessions",
            json={"path": path, "type": "notebook", "name": "", "kernel": {"name": "python3"}},
            headers=server.headers,
            timeout=60,
        ).json()
        kernel_id = session["kernel"]["id"]
        km = ServerKernel(owns_kernel=False, connection_file=str(server.runtime_dir / f"kernel-{kernel_id}.json"))
        km.load_connection_file()
        LabLikeClient(nb, km=km, timeout=300, startup_timeout=120).execute()
        records = requests.get(
            server.url + "mlx/api/audit", params={"notebook": path}, headers=server.headers, timeout=10
        ).json()["records"]
        chats = [r for r in records if r["action"] == "chat.completions"]
        assert len(chats) == 3, records
        assert {r["kernel_id"] for r in chats} == {kernel_id}
        by_cell = {r["cell_id"] for r in chats}
        assert by_cell == {nb.cells[1].id, nb.cells[2].id}, by_cell  # map's threads see their cell too
        groups = requests.get(
            server.url + "mlx/api/audit/stats", params={"group_by": "notebook"}, headers=server.headers, timeout=10
        ).json()["groups"]
        assert {"key": path, "requests": 3} == {k: v for k, v in groups[0].items() if k in ("key", "requests")}
