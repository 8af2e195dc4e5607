"""Tiny real models for tests, generated once per session with the project's own CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def build_models(root: Path, names: list[str], tool_model: str | None = None, context: int | None = None) -> Path:
    """A models folder with one generated demo model copied under each name (and optionally
    the scripted tool-calling model); `context`: the context length written into its config.

    Made in a child process (`jupyter mlx-manager demo-model`), so the test process, which
    hosts the Jupyter server, never imports MLX.
    """
    folder = root / "models"
    subprocess.run(
        [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
         "--dir", str(folder), "--name", names[0], *(["--context", str(context)] if context else [])],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for name in names[1:]:
        shutil.copytree(folder / names[0], folder / name)
    if tool_model:
        subprocess.run(
            [sys.executable, "-m", "jupyter_mlx_manager.cli", "--data-dir", str(root / "cli-data"), "demo-model",
             "--dir", str(folder), "--name", tool_model, "--tool-calling"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return folder


def eos_id(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["eos_token_id"]
