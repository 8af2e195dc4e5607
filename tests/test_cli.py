"""`jupyter mlx-manager` as a user runs it: each verb a subprocess against a real Jupyter server
with a demo model, found the way a kernel's `connect()` finds it (the running servers' runtime
files) or named with `--url`/`--token`; `serve --install-service` under a temporary home."""

from __future__ import annotations

import argparse
import os
import plistlib
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from models import build_models
from servers import jupyter_server

from jupyter_mlx_manager import __version__
from jupyter_mlx_manager.cli import parser as cli_parser
from jupyter_mlx_manager.cli import service
from jupyter_mlx_manager.devhub import DevHub

HUB_REPO = "demo/tiny-llama"
SPECIAL = ("<|im_start|>", "<|endoftext|>", "<|im_end|>")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    models = build_models(root, ["tiny-demo", "tiny-spare"])
    with DevHub() as hub:
        hub.add_repo(HUB_REPO, models / "tiny-demo", downloads=3)
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(root / "hf")}
        args = (f"--MLXManager.model_dirs={models}", "--MLXManager.default_keep_alive=600")
        with jupyter_server(root, *args, env=env) as server:
            yield server


def cli_env(lab, **extra: str) -> dict[str, str]:
    """A shell's environment on the server's machine: the runtime dir where the running
    server's file is, no kernel or JupyterHub variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_MLX_MANAGER", "JPY_", "JUPYTERHUB_"))}
    return {**env, "JUPYTER_RUNTIME_DIR": str(lab.runtime_dir), **extra}


def cli(lab, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", *args],
        env=env or cli_env(lab), input=stdin, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def pool_models(lab) -> dict[str, dict]:
    pool = requests.get(lab.url + "mlx/api/pool", headers=lab.headers, timeout=10).json()
    return {m["model"]: m for m in pool["models"]}


def test_version_and_help_on_every_option():
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"jupyter-mlx-manager {__version__}"

    def parsers(p: argparse.ArgumentParser):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    verbs = set()
    for p in parsers(cli_parser()):
        verbs.add(p.prog.split()[-1])
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), p.prog
            else:
                assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help text"
    assert {"list", "ps", "pull", "load", "unload", "rm", "run", "serve", "demo-model"} <= verbs


@pytest.mark.parametrize("spelling", ["hub", "jupyterhub"])
def test_serve_identity_takes_hub_as_readme_spells_it(spelling):
    args, _ = cli_parser().parse_known_args(["serve", "--identity", spelling])
    assert args.identity == "jupyterhub"  # MLXServe.identity's value
    with pytest.raises(SystemExit):
        cli_parser().parse_known_args(["serve", "--identity", "nobody"])


def test_list_load_ps_run_unload_rm(lab):
    listed = cli(lab, "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("local/tiny-demo ")]
    assert "text" in row and "demo · random weights" in row and "KiB" in row

    loaded = cli(lab, "load", "local/tiny-demo", "--keep-alive", "5m")
    assert loaded.returncode == 0, loaded.stderr
    assert "local/tiny-demo loaded" in loaded.stdout
    assert pool_models(lab)["local/tiny-demo"]["keep_alive"] == 300

    ps = cli(lab, "ps")
    assert ps.returncode == 0, ps.stderr
    (row,) = [line for line in ps.stdout.splitlines() if line.startswith("local/tiny-demo ")]
    assert "minutes from now" in row and str(pool_models(lab)["local/tiny-demo"]["pid"]) in row

    answered = cli(lab, "run", "local/tiny-demo", "Hello!", "--max-tokens", "12", "--seed", "0")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip(), "no reply text"
    assert "demo model" in answered.stderr and "random weights" in answered.stderr
    assert pool_models(lab)["local/tiny-demo"]["requests"] >= 1

    piped = cli(lab, "run", "local/tiny-demo", "--max-tokens", "4", "--seed", "0", stdin="Hello from a pipe")
    assert piped.returncode == 0 and piped.stdout.strip(), piped.stderr

    unloaded = cli(lab, "unload", "local/tiny-demo")
    assert unloaded.returncode == 0 and "local/tiny-demo" not in pool_models(lab)
    assert "no model loaded" in cli(lab, "ps").stdout

    removed = cli(lab, "rm", "local/tiny-spare")
    assert removed.returncode == 0, removed.stderr
    assert "deleted local/tiny-spare" in removed.stdout
    assert "local/tiny-spare" not in cli(lab, "list").stdout

    missing = cli(lab, "unload", "local/no-such-model")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


def test_run_is_an_interactive_chat_on_a_terminal(lab):
    """Without PROMPT on a terminal: a `>>>` prompt per turn, `/bye` ends it."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "run", "local/tiny-demo", "--max-tokens", "6"],
        stdin=follower, stdout=follower, stderr=follower, env=cli_env(lab), close_fds=True,
    )  # fmt: skip
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, count: int = 1) -> None:
        nonlocal seen
        deadline = time.monotonic() + 120
        while seen.count(marker) < count and time.monotonic() < deadline:
            if select.select([leader], [], [], 1)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:  # the process ended
                    return

    try:
        read_until(b">>> ")
        before = pool_models(lab).get("local/tiny-demo", {}).get("requests", 0)
        os.write(leader, b"Hello there\n")
        read_until(b">>> ", 2)
        os.write(leader, b"/bye\n")
        assert process.wait(60) == 0, seen.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "/bye" in text and text.count(">>> ") >= 2
    assert pool_models(lab)["local/tiny-demo"]["requests"] == before + 1


def test_pull_shows_progress_and_a_failure_says_why(lab):
    pulled = cli(lab, "pull", HUB_REPO)
    assert pulled.returncode == 0, pulled.stderr
    assert f"{HUB_REPO} is local" in pulled.stdout
    assert HUB_REPO in pulled.stderr and "B/s" in pulled.stderr  # the progress bar
    assert HUB_REPO in cli(lab, "list").stdout

    failed = cli(lab, "pull", "demo/not-there")
    assert failed.returncode == 1
    assert "demo/not-there was not found on the Hub" in failed.stderr and "Traceback" not in failed.stderr


def test_url_and_token_name_the_server(lab, tmp_path):
    nowhere = cli_env(lab, JUPYTER_RUNTIME_DIR=str(tmp_path / "empty-runtime"))
    lost = cli(lab, "list", env=nowhere)
    assert lost.returncode == 1 and "--url" in lost.stderr and "Traceback" not in lost.stderr

    found = cli(lab, "list", "--url", lab.url, "--token", lab.token, env=nowhere)
    assert found.returncode == 0 and "local/tiny-demo" in found.stdout, found.stderr

    refused = cli(lab, "ps", "--url", lab.url, "--token", "not-a-token", env=nowhere)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ")


def test_install_service_writes_a_systemd_user_unit_and_removes_it(tmp_path):
    home, config = tmp_path / "home", tmp_path / "xdg-config"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(config)}
    command = [sys.executable, "-m", "jupyter_mlx_manager.cli", "serve"]
    options = ["--port", "8899", "--identity", "hub", "--MLXManager.model_dirs=/srv/my models"]
    done = subprocess.run(
        [*command, *options, "--install-service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr

    unit = config / "systemd" / "user" / "jupyter-mlx-manager.service"
    text = unit.read_text()
    assert text in done.stdout  # printed as written
    (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.startswith(f"ExecStart={sys.executable} -m jupyter_mlx_manager.cli serve ")
    assert "--MLXServe.port=8899" in exec_start and "--MLXServe.identity=jupyterhub" in exec_start
    assert '"--MLXManager.model_dirs=/srv/my models"' in exec_start  # quoted for systemd
    assert "WantedBy=default.target" in text
    enabled = config / "systemd" / "user" / "default.target.wants" / "jupyter-mlx-manager.service"
    assert enabled.is_symlink() and enabled.resolve() == unit.resolve()  # starts at login
    assert "systemctl --user" in done.stdout and not (home / ".config").exists()

    removed = subprocess.run([*command, "--uninstall-service"], env=env, capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists() and not enabled.is_symlink()


def test_install_service_writes_a_launchd_agent_on_macos(tmp_path, capsys):
    files = service.install(["--MLXServe.port=8899"], platform="darwin", home=tmp_path, environ={})
    agent = plistlib.loads(files.definition.read_bytes())
    assert files.definition == tmp_path / "Library" / "LaunchAgents" / "org.jupyter.mlx-manager.plist"
    assert agent["ProgramArguments"] == [
        sys.executable,
        "-m",
        "jupyter_mlx_manager.cli",
        "serve",
        "--MLXServe.port=8899",
    ]
    assert agent["RunAtLoad"] is True and agent["StandardErrorPath"].startswith(str(tmp_path))
    assert "launchctl bootstrap" in capsys.readouterr().out
    assert service.uninstall(platform="darwin", home=tmp_path, environ={}) and not files.definition.exists()


def test_demo_model_all_kinds_makes_one_of_each_installed_kind_labelled(tmp_path):
    from jupyter_mlx_manager.models.catalog import ModelCatalog
    from jupyter_mlx_manager.models.kinds import KINDS, missing_extra

    command = [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(tmp_path / "data"), "demo-model"]
    folder = tmp_path / "models"
    done = subprocess.run([*command, "--all-kinds", "--dir", str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    described = {m["id"]: m for m in ModelCatalog([folder]).list_local()}
    installed = [kind for kind in KINDS if missing_extra(kind) is None]
    names = {"text": "local/tiny-demo", **{kind: f"local/tiny-{kind}" for kind in KINDS if kind != "text"}}
    assert {m["kind"] for m in described.values()} == set(installed)
    for kind in installed:
        assert described[names[kind]]["kind"] == kind and described[names[kind]]["demo"] is True

    # Again with --if-missing: the kinds that have a model are skipped, a missing one is made.
    shutil.rmtree(folder / "tiny-demo")
    again = subprocess.run(
        [*command, "--all-kinds", "--if-missing", "--dir", str(folder)], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    (created,) = [line for line in again.stdout.splitlines() if line.startswith("created")]
    assert created.startswith("created local/tiny-demo ")
    assert (folder / "tiny-demo" / "config.json").is_file()
    assert not [p for p in Path(folder).iterdir() if p.name.startswith(".")]  # no scratch folders left
