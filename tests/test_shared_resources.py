"""Shared resources (SPEC "Shared resources"): what a user may do to models, runners, downloads
and the disk that others share, and what only admins may do or see. Two accounts on a real
server: the owner (an admin, Jupyter-authenticated) and bob, an approved user (a JWT)."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from conftest import OWNER, server_config
from models import build_models, eos_id
from waiting import wait_until_async

from jupyter_mlx_manager.devhub import DevHub

MODEL = "local/tiny-demo"
GATED = "mlx-test/gated"
GATED_TOKEN = "hf_gated_" + "t0ken" * 5
FINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory):
    folder = build_models(tmp_path_factory.mktemp("shared-models"), ["tiny-demo"])
    no_tokenizer = folder / "no-tokenizer"
    shutil.copytree(folder / "tiny-demo", no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "tokenizer_config.json").unlink()
    return folder


@pytest.fixture(scope="session")
def shared_hub(shared_models):
    hub = DevHub()
    for name in ("slow", "mine", "other"):
        hub.add_repo(f"mlx-test/copy-{name}", shared_models / "tiny-demo", downloads=1)
    hub.add_repo(GATED, shared_models / "tiny-demo", token=GATED_TOKEN)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(shared_hub):
    shared_hub.reset()
    yield shared_hub
    shared_hub.reset()


@pytest.fixture
def model_dir(tmp_path, shared_models):
    """A per-test model folder (tests delete from it)."""
    folder = tmp_path / "models"
    for name in ("tiny-demo", "no-tokenizer"):
        shutil.copytree(shared_models / name, folder / name)
    shutil.copytree(shared_models / "tiny-demo", folder / "spare")
    return folder


@pytest.fixture
def hf_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hf" / "hub"


@pytest.fixture
def mlx_config(hf_cache, model_dir):
    return server_config(model_dir, default_keep_alive=300, max_loaded_models=3, hf_token=GATED_TOKEN)


@pytest.fixture
def no_eos(shared_models):
    return {str(eos_id(shared_models / "tiny-demo")): -100}


async def load(api, model=MODEL, auth="jupyter", **body):
    return await api("POST", "mlx/api/pool/load", auth=auth, body={"model": model, **body})


async def unload(api, model=MODEL, auth="jupyter", **body):
    return await api("POST", "mlx/api/pool/unload", auth=auth, body={"model": model, **body})


async def pool_models(api) -> dict[str, dict]:
    return {m["model"]: m for m in (await api("GET", "mlx/api/pool")).body["models"]}


async def wait_download(api, download_id: int, auth="jupyter", timeout: float = 30.0) -> dict:
    reply = await wait_until_async(
        lambda: api("GET", f"mlx/api/downloads/{download_id}", auth=auth),
        f"download {download_id} to end",
        timeout,
        interval=0.05,
        done=lambda reply: reply.body["status"] in FINAL,
    )
    return reply.body


async def start_download(api, repo_id: str, auth="jupyter", **body) -> dict:
    reply = await api("POST", "mlx/api/downloads", auth=auth, body={"repo_id": repo_id, **body})
    assert reply.code == 202, reply.body
    return reply.body


async def busy_chat(api, no_eos, model=MODEL):
    """A long request of the owner's, in the background, once the pool counts it in flight."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000, "logit_bias": no_eos}
    chat = asyncio.ensure_future(api("POST", "mlx/v1/chat/completions", body=body))

    async def in_flight() -> bool:
        counted = (await pool_models(api)).get(model, {}).get("in_flight")
        assert counted or not chat.done(), chat.result().body
        return counted

    await wait_until_async(in_flight, f"{model} to count the chat in flight", timeout=20, interval=0.05)
    return chat


# -- the pool ---------------------------------------------------------------------------------------


async def test_pin_long_keep_alive_and_force_are_for_admins(api, make_user):
    _, bob = await make_user("bob")
    loaded = await load(api, auth=bob)  # loading a local model with the default keep-alive: anyone
    assert loaded.code == 200 and loaded.body["pinned"] is False and loaded.body["keep_alive"] == 300
    for body in ({"pin": True}, {"keep_alive": -1}, {"keep_alive": 301}, {"keep_alive": 86400}):
        refused = await load(api, auth=bob, **body)
        assert refused.code == 403 and refused.body["reason"] == "admin_required", (body, refused.body)
    assert (await load(api, auth=bob, keep_alive="5m")).code == 400  # malformed stays a 400
    model = (await pool_models(api))[MODEL]
    assert model["pinned"] is False and model["keep_alive"] == 300, "a refused request changes nothing"
    shorter = await load(api, auth=bob, keep_alive=60, pin=False)  # within the default; unpinned stays so
    assert shorter.code == 200 and shorter.body["keep_alive"] == 60
    refused = await unload(api, auth=bob, force=True)
    assert refused.code == 403 and refused.body["reason"] == "admin_required"

    # A request's keep_alive is held to the same rule: it cannot lengthen the shared model's.
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = await api("POST", "mlx/v1/chat/completions", auth=bob, body={**chat, "keep_alive": -1})
    assert refused.code == 403, refused.body
    assert (await pool_models(api))[MODEL]["keep_alive"] == 60
    assert (await api("POST", "mlx/v1/chat/completions", auth=bob, body={**chat, "keep_alive": 30})).code == 200

    # The admin may do all of it.
    pinned = await load(api, pin=True, keep_alive=-1)
    assert pinned.code == 200 and pinned.body["pinned"] is True and pinned.body["keep_alive"] == -1
    assert (await load(api, keep_alive=7 * 86400)).code == 200
    # A user can neither unpin nor unload what an admin pinned.
    assert (await load(api, auth=bob, pin=False)).code == 403
    assert (await unload(api, auth=bob)).code == 403
    assert (await pool_models(api))[MODEL]["pinned"] is True
    assert (await unload(api, force=True)).code == 200
    assert await pool_models(api) == {}

    # The audit trail names who loaded and unloaded (pool events are written in the background).
    audit = await wait_until_async(
        lambda: api("GET", "mlx/api/audit", params={"limit": "100"}),
        "the unload in the audit trail",
        done=lambda reply: ("model.unload", OWNER) in [(r["action"], r["user"]) for r in reply.body["records"]],
    )
    assert ("model.load", "bob") in [(r["action"], r["user"]) for r in audit.body["records"]]


async def test_a_model_another_user_is_streaming_from_is_not_theirs_to_unload(api, make_user, no_eos):
    _, bob = await make_user("bob")
    assert (await load(api)).code == 200
    chat = await busy_chat(api, no_eos)
    busy = await unload(api, auth=bob)
    assert busy.code == 409 and busy.body["reason"] == "model_busy", busy.body
    assert "other users" in busy.body["message"]
    forced = await unload(api, auth=bob, force=True)
    assert forced.code == 403 and forced.body["reason"] == "admin_required"
    assert not chat.done() and MODEL in await pool_models(api)
    # Without force, nobody unloads a model answering requests (the admin neither).
    assert (await unload(api)).code == 409

    # A model nobody else is using is the user's to unload.
    assert (await load(api, "local/spare", auth=bob)).code == 200
    assert (await unload(api, "local/spare", auth=bob)).code == 200
    assert "local/spare" not in await pool_models(api)

    assert (await unload(api, force=True)).code == 200  # the admin's force ends the request
    assert (await chat).code >= 500
    assert await pool_models(api) == {}


async def test_ids_differing_only_in_case_are_one_model(api, make_user):
    _, bob = await make_user("bob")
    first = await load(api, "local/Tiny-Demo", auth=bob)
    assert first.code == 200, first.body
    assert first.body["model"] == MODEL, "the id as the folder spells it"
    again = await load(api, MODEL)
    assert again.code == 200 and again.body["pid"] == first.body["pid"], "one runner, not two"
    assert list(await pool_models(api)) == [MODEL]
    described = await api("GET", "mlx/api/models/local/LOCAL/TINY-DEMO", auth=bob)
    assert described.code == 200 and described.body["id"] == MODEL and described.body["loaded"] is True
    assert [m["id"] for m in (await api("GET", "mlx/api/models/local")).body["models"]].count(MODEL) == 1
    reply = await api(
        "POST",
        "mlx/v1/chat/completions",
        auth=bob,
        body={"model": "local/TINY-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert reply.code == 200, reply.body
    assert list(await pool_models(api)) == [MODEL], "the request used the loaded model"
    assert (await unload(api, "LOCAL/tiny-DEMO", auth=bob)).code == 200
    assert await pool_models(api) == {}

    # Hub ids with "--" would share a cache folder (models--a--b--c) with another id: refused.
    for bad in ("mlx-test/copy--slow", "mlx--test/copy-slow"):
        reply = await api("POST", "mlx/api/downloads", body={"repo_id": bad})
        assert reply.code == 400 and reply.body["reason"] == "invalid_model_id", bad
        assert (await load(api, bad)).code == 400


async def test_load_errors_quote_paths_and_stderr_only_to_admins(api, make_user, model_dir):
    _, bob = await make_user("bob")
    users = await load(api, "local/no-tokenizer", auth=bob)
    admins = await load(api, "local/no-tokenizer")
    assert users.code == admins.code == 422
    assert "no tokenizer" in users.body["message"] and "no tokenizer" in admins.body["message"]
    assert str(model_dir) not in users.body["message"] and "/" + model_dir.name + "/" not in users.body["message"]
    assert str(model_dir) in admins.body["message"], admins.body
    # Local model listings show the folder to admins only.
    mine = (await api("GET", "mlx/api/models/local", auth=bob)).body["models"]
    assert mine and all("path" not in m for m in mine)
    assert all(m["path"].startswith(str(model_dir)) for m in (await api("GET", "mlx/api/models/local")).body["models"])
    one = await api("GET", f"mlx/api/models/local/{MODEL}", auth=bob)
    assert one.code == 200 and "path" not in one.body and str(model_dir) not in json.dumps(one.body)


# -- deletes ----------------------------------------------------------------------------------------


async def test_only_admins_delete_and_a_delete_never_races_a_load(api, make_user, model_dir):
    _, bob = await make_user("bob")
    refused = await api("DELETE", f"mlx/api/models/local/{MODEL}", auth=bob)
    assert refused.code == 403 and refused.body["reason"] == "admin_required"
    refused = await api("DELETE", f"mlx/api/models/local/{MODEL}", auth=bob, params={"force": "1"})
    assert refused.code == 403
    assert (model_dir / "tiny-demo" / "config.json").is_file()

    # A delete and a load of the same model at once: one of them wins, cleanly.
    delete, loaded = await asyncio.gather(
        api("DELETE", "mlx/api/models/local/local/SPARE"), load(api, "local/spare", auth=bob)
    )
    assert (delete.code, loaded.code) in ((200, 404), (200, 409), (409, 200)), (delete.body, loaded.body)
    if delete.code == 200:
        assert delete.body["id"] == "local/spare" and not (model_dir / "spare").exists()
        assert "local/spare" not in await pool_models(api)
    else:  # the load won: the model stays, loaded, until it is unloaded
        assert delete.body["reason"] in ("model_loading", "model_loaded")
        assert (model_dir / "spare" / "config.json").is_file() and "local/spare" in await pool_models(api)
        assert (await unload(api, "local/spare")).code == 200

    # Loaded: only with force (which unloads it first).
    assert (await load(api)).code == 200
    refused = await api("DELETE", "mlx/api/models/local/local/Tiny-Demo")
    assert refused.code == 409 and refused.body["reason"] == "model_loaded"
    forced = await api("DELETE", "mlx/api/models/local/local/Tiny-Demo", params={"force": "1"})
    assert forced.code == 200 and forced.body["id"] == MODEL and forced.body["freed_bytes"] > 0
    assert not (model_dir / "tiny-demo").exists() and await pool_models(api) == {}
    records = (await api("GET", "mlx/api/audit", params={"limit": "100"})).body["records"]
    assert (MODEL, OWNER) in [(r["model"], r["user"]) for r in records if r["action"] == "model.delete"]


# -- downloads --------------------------------------------------------------------------------------


async def test_users_see_and_cancel_only_their_own_downloads(api, make_user, hub, mlx_app):
    _, bob = await make_user("bob")
    bobs = await start_download(api, "mlx-test/copy-mine", auth=bob)
    assert (await wait_download(api, bobs["id"], auth=bob))["status"] == "completed"

    hub.throttle_bps = 100_000
    admins = await start_download(api, "mlx-test/copy-slow")
    assert [d["id"] for d in (await api("GET", "mlx/api/downloads", auth=bob)).body["downloads"]] == [bobs["id"]]
    everything = [d["id"] for d in (await api("GET", "mlx/api/downloads")).body["downloads"]]
    assert everything == [admins["id"], bobs["id"]], "admins see every download"
    for path in (f"mlx/api/downloads/{admins['id']}", f"mlx/api/downloads/{admins['id']}/progress"):
        hidden = await api("GET", path, auth=bob)
        assert hidden.code == 404 and hidden.body["reason"] == "download_not_found", (path, hidden.body)
    refused = await api("DELETE", f"mlx/api/downloads/{admins['id']}", auth=bob)
    assert refused.code == 403 and refused.body["reason"] == "not_yours"
    refused = await api("DELETE", "mlx/api/models/local/mlx-test/copy-mine", auth=bob)
    assert refused.code == 403 and refused.body["reason"] == "admin_required", "a user's delete, even of their download"
    # Deleting a model while it downloads is refused, whoever asks.
    busy = await api("DELETE", "mlx/api/models/local/mlx-test/copy-slow")
    assert busy.code == 409 and busy.body["reason"] == "download_in_progress"

    # Asking for a repo another user is downloading joins that download (the same record), in
    # whatever case the id is written.
    joined = await start_download(api, "MLX-Test/Copy-Slow", auth=bob)
    assert joined["id"] == admins["id"] and joined["repo_id"] == "mlx-test/copy-slow"
    assert (await api("GET", f"mlx/api/downloads/{admins['id']}", auth=bob)).code == 200
    assert (await api("DELETE", f"mlx/api/downloads/{admins['id']}", auth=bob)).code == 403, "still not bob's"
    cancelled = await api("DELETE", f"mlx/api/downloads/{admins['id']}")
    assert cancelled.code == 200 and cancelled.body["status"] == "cancelled"


async def test_pull_request_revisions_are_for_admins(api, make_user):
    _, bob = await make_user("bob")
    refused = await api(
        "POST", "mlx/api/downloads", auth=bob, body={"repo_id": "mlx-test/copy-other", "revision": "refs/pr/1"}
    )
    assert refused.code == 403 and refused.body["reason"] == "admin_required"
    assert (await api("GET", "mlx/api/downloads", auth=bob)).body["downloads"] == []
    admins = await api("POST", "mlx/api/downloads", body={"repo_id": "mlx-test/copy-other", "revision": "refs/pr/1"})
    assert admins.code == 202, admins.body  # the local Hub has no such revision: it fails, as a download
    assert (await wait_download(api, admins.body["id"]))["status"] == "failed"


async def test_the_servers_hub_token_serves_admins_only(api, make_user, mlx_app, hf_cache):
    _, bob = await make_user("bob")
    failed = await wait_download(api, (await start_download(api, GATED, auth=bob))["id"], auth=bob)
    assert failed["status"] == "failed" and failed["error_kind"] == "gated", failed
    assert "c.MLXManager" not in failed["error"] and "administrator" in failed["error"]
    done = await wait_download(api, (await start_download(api, GATED))["id"])
    assert done["status"] == "completed", done

    sent = []
    original = mlx_app.hub_search._list
    mlx_app.hub_search._list = lambda query, fetch, token=None: sent.append(token) or original(query, fetch, token)
    assert (await api("GET", "mlx/api/models/search", auth=bob, params={"q": "copy"})).code == 200
    assert (await api("GET", "mlx/api/models/search", params={"q": "copy"})).code == 200
    assert sent == [False, GATED_TOKEN], "no token at all for a user (not even a saved one); the server's for admins"


async def test_download_errors_quote_server_paths_only_to_admins(api, make_user, mlx_app, hf_cache):
    _, bob = await make_user("bob")
    mlx_app.downloads.free_bytes = lambda path: 1024
    record = await start_download(api, "mlx-test/copy-mine", auth=bob)
    users = await wait_download(api, record["id"], auth=bob)
    admins = await wait_download(api, record["id"])
    assert users["error_kind"] == admins["error_kind"] == "disk_space"
    assert "not enough free disk space" in users["error"] and str(hf_cache) not in users["error"]
    assert "/" + hf_cache.name not in users["error"]
    assert str(hf_cache) in admins["error"], admins


class TestTokenForUsers:
    @pytest.fixture
    def mlx_config(self, hf_cache, model_dir):
        return server_config(model_dir, hf_token=GATED_TOKEN)

    async def test_hf_token_for_users_lets_users_download_gated_repos(self, api, make_user, mlx_app):
        _, bob = await make_user("bob")
        # The trait is wired by the app; set the services' switch directly too, so this test
        # holds on its own.
        mlx_app.downloads.hf_token_for_users = mlx_app.hub_search.hf_token_for_users = True
        done = await wait_download(api, (await start_download(api, GATED, auth=bob))["id"], auth=bob)
        assert done["status"] == "completed", done
        assert mlx_app.hub_search.token_for({"username": "bob", "is_admin": False}) == GATED_TOKEN


# -- the rules themselves, without a server ---------------------------------------------------------


def test_folders_differing_only_in_case_are_one_model(tmp_path, shared_models):
    from jupyter_mlx_manager.models.catalog import ModelCatalog
    from jupyter_mlx_manager.models.ids import model_key

    folder = tmp_path / "models"
    shutil.copytree(shared_models / "tiny-demo", folder / "tiny-demo")
    if (folder / "TINY-DEMO").exists():
        pytest.skip("a case-insensitive file system holds one folder anyway")
    shutil.copytree(shared_models / "tiny-demo", folder / "TINY-DEMO")
    hub = tmp_path / "hub"
    snapshot = hub / "models--Org--Name" / "snapshots" / ("a" * 40)
    shutil.copytree(shared_models / "tiny-demo", snapshot)
    catalog = ModelCatalog([folder], hub)
    assert catalog.local_ids() == ["local/TINY-DEMO", "Org/Name"], "one id per model, the first folder's"
    for asked in ("local/tiny-demo", "local/Tiny-Demo", "LOCAL/TINY-DEMO"):
        assert catalog.locate(asked) == ("local/TINY-DEMO", folder / "TINY-DEMO"), asked
    assert catalog.locate("org/name") == ("Org/Name", snapshot)
    assert model_key("LOCAL/Tiny-Demo") == model_key("local/tiny-demo") and model_key("Org/Name") == "org/name"
    assert "path" not in catalog.describe("org/NAME", {"username": "bob", "is_admin": False})
    assert catalog.describe("org/NAME")["path"] == str(snapshot)


def test_what_users_are_told_of_failures():
    from jupyter_mlx_manager.downloads.manager import public
    from jupyter_mlx_manager.errors import scrub_paths
    from jupyter_mlx_manager.pool.pool import public_load_error

    bob, admin = {"username": "bob", "is_admin": False}, {"username": "ann", "is_admin": True}
    record = {"id": 1, "repo_id": "a/b", "status": "failed", "error_kind": "io", "user": "bob",
              "error": "writing model.safetensors failed: [Errno 28] No space left on device: '/srv/hf/models--a--b/x'"}  # fmt: skip
    assert public(record, admin)["error"] == record["error"]
    assert "/srv" not in public(record, bob)["error"] and "a/b" in public(record, bob)["error"]
    worker = {**record, "error_kind": "worker_exit", "error": "the download worker exited with code 1: Traceback ..."}
    assert "Traceback" not in public(worker, bob)["error"]
    listing = {**record, "error_kind": "unsafe_file_name", "error": "a/b lists a file named '../evil' ('..')"}
    assert public(listing, bob)["error"] == listing["error"]
    assert public_load_error("the runner exited with code 1 while loading: Traceback /x/y.py", "a/b", None) == (
        "the runner exited with code 1 while loading (the server log has the details)"
    )
    assert public_load_error("/m/a has no tokenizer", "local/a", "/m/a") == "local/a has no tokenizer"
    assert scrub_paths("org/name 1/2 http://h:1/x/y '/etc/passwd' ~/.cache/hf") == (
        "org/name 1/2 http://h:1/x/y '<path>' <path>"
    )
