"""The server's configuration files, read as `jupyter server` / `jupyter lab` read them, for the
processes that are not a Jupyter server but must agree with one (`jupyter mlx-manager …`,
`serve`)."""

from __future__ import annotations

from pathlib import Path

from jupyter_core.paths import jupyter_config_path
from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader


def server_config() -> Config:
    """For each config directory (lowest priority first): the `.d` folders, then the `.json`
    and `.py` files of `jupyter_server_config` and `jupyter_lab_config`."""
    config = Config()
    for directory in reversed(jupyter_config_path()):
        for base in ("jupyter_server_config", "jupyter_lab_config"):
            drop_in = Path(directory) / f"{base}.d"
            files = [(JSONFileConfigLoader, p.name, str(drop_in)) for p in sorted(drop_in.glob("*.json"))]
            files += [(JSONFileConfigLoader, f"{base}.json", directory), (PyFileConfigLoader, f"{base}.py", directory)]
            for loader, name, path in files:
                try:
                    config.merge(loader(name, path=path).load_config())
                except ConfigFileNotFound:
                    pass
    return config
