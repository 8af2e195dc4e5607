"""Rich results of the kernel-side client, and `map()`, against a real server process."""

from __future__ import annotations

import copy
import json
import pickle

import httpx
import pytest
from models import build_models, eos_id
from pydantic import BaseModel
from servers import jupyter_server

from jupyter_mlx_manager import connect
from jupyter_mlx_manager.client import (
    AuditRecords,
    ChatResult,
    CompletionResult,
    LocalModels,
    MLXClient,
    MLXManagerError,
    PoolStatus,
    SearchResults,
    StructuredOutputError,
    Table,
)
from jupyter_mlx_manager.client.discovery import ServerInfo
from jupyter_mlx_manager.client.results import markdown_text

MODEL = "local/tiny-demo"
HUB_REPO = "demo/tiny-llama"

try:
    import pandas
except ImportError:
    pandas = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from jupyter_mlx_manager.devhub import DevHub

    root = tmp_path_factory.mktemp("client-results")
    models = build_models(root, ["tiny-demo"])
    with DevHub() as hub:
        hub.add_repo(HUB_REPO, models / "tiny-demo", downloads=10, likes=1)
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(root / "hf")}
        args = (f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=-1")
        with jupyter_server(root, *args, env=env) as running:
            running.models = models
            yield running


@pytest.fixture
def client(server, monkeypatch):
    # As in a kernel: connect() finds the server from the environment.
    monkeypatch.setenv("JUPYTER_MLX_MANAGER_URL", server.url)
    monkeypatch.setenv("JUPYTER_MLX_MANAGER_TOKEN", server.token)
    return connect()


@pytest.fixture
def no_eos(server):
    return {str(eos_id(server.models / "tiny-demo")): -100}


def test_a_chat_result_is_its_text_and_renders_markdown_with_a_footer(client, no_eos):
    reply = client.chat(MODEL, "Hello", max_tokens=6, logit_bias=no_eos, temperature=0)
    assert isinstance(reply, ChatResult) and isinstance(reply, str)
    text = reply.text
    assert type(text) is str and reply == text and hash(reply) == hash(text)
    assert reply[:3] == text[:3] and len(reply) == len(text) and f"<{reply}>" == f"<{text}>"
    assert json.dumps({"a": reply}) == json.dumps({"a": text}) and str(reply) == text
    assert reply.completion_tokens == 6 and reply.prompt_tokens > 0 and reply.model == MODEL
    assert reply.finish_reason == "length" and reply.tool_calls == [] and reply.duration_s > 0
    assert reply.tokens_per_second > 0
    markdown = reply._repr_markdown_()
    assert markdown.startswith(markdown_text(text)) if text.strip() else "empty reply" in markdown
    assert f"`{MODEL}`" in markdown and "6 completion tokens" in markdown and "tok/s" in markdown
    assert "TTFT" in markdown and "finish: length" in markdown
    if reply.ttft_s is not None:  # when the server reports it (X-MLX-TTFT-Ms)
        assert 0 < reply.ttft_s <= reply.duration_s
    for clone in (pickle.loads(pickle.dumps(reply)), copy.copy(reply)):
        assert type(clone) is ChatResult and clone == reply and clone.usage == reply.usage

    completion = client.complete(MODEL, "Once upon", max_tokens=4, logit_bias=no_eos)
    assert isinstance(completion, CompletionResult) and completion.completion_tokens == 4
    assert "4 completion tokens" in completion._repr_markdown_()
    # Streaming still yields plain text pieces.
    pieces = list(client.chat(MODEL, "Hello", stream=True, max_tokens=3, logit_bias=no_eos))
    assert pieces and all(type(p) is str for p in pieces)


def test_pool_local_models_audit_and_search_render_as_tables(client, no_eos):
    client.load(MODEL)
    client.chat(MODEL, "Hi", max_tokens=2, logit_bias=no_eos)

    pool = client.pool()
    assert isinstance(pool, PoolStatus) and isinstance(pool, dict)
    assert [m["model"] for m in pool["models"]] == [MODEL] and pool.models == pool["models"]
    json.dumps(pool)  # still plain JSON data
    html = pool._repr_html_()
    assert "<table>" in html and MODEL in html and "Model pool" in html and "1 loaded" in html

    local = client.local_models()
    assert isinstance(local, LocalModels) and isinstance(local, list)
    assert MODEL in [m["id"] for m in local]
    assert MODEL in local._repr_html_() and "<th>id</th>" in local._repr_html_()

    records = client.audit(limit=5)
    assert isinstance(records, AuditRecords) and records[0]["action"] == "chat.completions"
    assert "chat.completions" in records._repr_html_() and "<th>ttft_ms</th>" in records._repr_html_()

    found = client.search("tiny", limit=5)
    assert isinstance(found, SearchResults) and HUB_REPO in [m["id"] for m in found]
    assert HUB_REPO in found._repr_html_()

    for table in (pool, local, records, found):
        if pandas is None:
            with pytest.raises(ImportError, match="pip install pandas"):
                table.to_pandas()
        else:
            frame = table.to_pandas()
            assert isinstance(frame, pandas.DataFrame) and len(frame) == len(getattr(table, "models", table))


def test_tables_escape_and_format_their_cells():
    rows = [{"id": "<script>x</script>", "size_bytes": 3 * 1024**3, "parameters": 135_000_000,
             "quantization": {"bits": 4, "group_size": 64}, "loaded": True, "downloading": False}]  # fmt: skip
    html = LocalModels(rows)._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "3.0 GiB" in html and "135.0M" in html and "4-bit" in html and "✓" in html
    assert "no rows" in Table()._repr_html_() and "<th>model</th>" in PoolStatus({"models": []})._repr_html_()
    assert "more rows" in Table([{"n": i} for i in range(500)])._repr_html_()


def test_sizes_have_one_style_and_status_renders_as_a_table(client):
    from jupyter_mlx_manager.client.results import format_bytes

    assert [format_bytes(n) for n in (512, 3 * 1024**2, 1536 * 1024**2)] == ["512 B", "3.0 MiB", "1.5 GiB"]
    status = client.status()
    assert isinstance(status, dict) and status["version"]  # still the API's dict
    html = status._repr_html_()
    assert "<table>" in html and "device" in html and "loaded models" in html and "{" not in html
    assert "GiB" in dict(status.rows())["memory"]


def test_a_reply_renders_as_markdown_without_raw_html():
    reply = ChatResult("see <img src=x onerror=alert(1)> and `<b>` and\n```html\n<p>x</p>\n```\n", model="m/x")
    markdown = reply._repr_markdown_()
    assert "<img" not in markdown and "&lt;img" in markdown
    assert "`<b>`" in markdown and "<p>x</p>" in markdown  # code stays as written
    assert reply == "see <img src=x onerror=alert(1)> and `<b>` and\n```html\n<p>x</p>\n```\n"
    assert "TTFT —" in markdown and "`m/x`" in markdown and "empty reply" in ChatResult("")._repr_markdown_()


def test_map_returns_results_in_order_with_a_bad_item_in_place(client, no_eos):
    prompts = ["word " * (i + 1) for i in range(50)]
    prompts[17] = [{"role": "wizard", "content": "not a chat role"}]  # refused by the server: 400
    results = client.map(MODEL, prompts, concurrency=8, max_tokens=2, logit_bias=no_eos, progress=False)
    assert len(results) == 50
    bad = results[17]
    assert isinstance(bad, MLXManagerError) and bad.status == 400 and "role" in bad.message
    good = [r for i, r in enumerate(results) if i != 17]
    assert all(isinstance(r, ChatResult) and r.completion_tokens == 2 for r in good)
    # Longer prompts have more prompt tokens: the results are in the order of their prompts.
    counts = [r.prompt_tokens for r in good]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


class Person(BaseModel):
    name: str
    age: int


def _fake_client(replies, seen, statuses=None):
    """A client over a stand-in server that answers each chat with the next reply text."""
    statuses = list(statuses or [])

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if statuses:
            return httpx.Response(statuses.pop(0), json={"error": {"message": "busy", "code": "server_busy"}})
        text = replies[body["messages"][-1]["content"]]
        usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return httpx.Response(200, json={"model": body["model"], "choices": [choice], "usage": usage})

    client = MLXClient(ServerInfo("http://mlx.test/", "t", "test"))
    client._http = httpx.Client(base_url="http://mlx.test/", transport=httpx.MockTransport(handler))
    return client


def test_map_with_a_pydantic_schema_sends_it_and_validates_each_reply():
    replies = {
        "a": '{"name": "Ada", "age": 36}',
        "b": '```json\n{"name": "Bob", "age": 7}\n```',  # a fenced reply still parses
        "c": '{"name": "Cy", "age": "old"}',  # does not validate: reported in its place
        "d": "not json at all",
    }
    seen = []
    results = _fake_client(replies, seen).map("m", ["a", "b", "c", "d"], schema=Person, progress=False)
    assert results[:2] == [Person(name="Ada", age=36), Person(name="Bob", age=7)]
    assert isinstance(results[2], StructuredOutputError) and results[2].text == replies["c"]
    assert isinstance(results[3], StructuredOutputError) and "Person" in str(results[3])
    fmt = seen[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Person"
    assert fmt["json_schema"]["schema"] == Person.model_json_schema()


def test_map_with_a_json_schema_dict_and_busy_retries():
    schema = {"title": "Point list", "type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    replies = {"a": '{"x": 1.5}', "b": '{"y": 2}'}
    seen = []
    client = _fake_client(replies, seen, statuses=[429, 503])  # busy twice, then served
    client._BUSY_DELAY = 0.01
    results = client.map("m", ["a", "b"], schema=schema, concurrency=1, progress=False)
    assert results[0] == {"x": 1.5}
    assert isinstance(results[1], StructuredOutputError) and "'x' is a required property" in str(results[1])
    assert len(seen) == 4 and seen[0]["response_format"]["json_schema"]["name"] == "Point_list"
    with pytest.raises(TypeError):
        client.map("m", ["a"], schema=42)
    assert client.map("m", [], progress=False) == []


def test_the_configured_sdk_clients_reach_this_server(client, no_eos):
    """`connect().openai()` and `connect().anthropic()` carry the kernel's own credential."""
    reply = client.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logit_bias=no_eos
    )
    assert reply.usage.completion_tokens == 3
    message = client.anthropic().messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}], extra_body={"logit_bias": no_eos}
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
