"""`serve --install-service` / `--uninstall-service`: run `jupyter mlx-manager serve` at login,
as a systemd user unit on Linux or a launchd agent on macOS.

The files go where those systems look for a user's own services, and nothing else is touched:
on Linux the unit is enabled the way `systemctl --user enable` does it (a link in
`default.target.wants`), so it starts at the next login; the commands that start or stop it
now are printed, not run.
"""

from __future__ import annotations

import os
import plistlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT = "jupyter-mlx-manager.service"
LABEL = "org.jupyter.mlx-manager"


@dataclass(frozen=True)
class ServiceFiles:
    """Where a platform's service definition lives, and the commands that act on it now."""

    definition: Path
    enabled_link: Path | None
    start_now: str
    stop_now: str


def serve_command(serve_args: list[str]) -> list[str]:
    """The command the service runs: this Python, so the service uses this installation."""
    return [sys.executable, "-m", "jupyter_mlx_manager.cli", "serve", *serve_args]


def service_files(platform: str, home: Path, environ: dict[str, str]) -> ServiceFiles:
    if platform == "darwin":
        plist = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return ServiceFiles(
            plist, None, f"launchctl bootstrap gui/$(id -u) {plist}", f"launchctl bootout gui/$(id -u)/{LABEL}"
        )
    if platform.startswith("linux"):
        config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        units = config / "systemd" / "user"
        return ServiceFiles(
            units / UNIT,
            units / "default.target.wants" / UNIT,
            f"systemctl --user daemon-reload && systemctl --user start {UNIT}",
            f"systemctl --user stop {UNIT}",
        )
    raise UnsupportedPlatform(
        f"running serve as a service is supported on Linux (systemd) and macOS (launchd), not {platform}"
    )


class UnsupportedPlatform(RuntimeError):
    pass


def _systemd_quote(arg: str) -> str:
    """One ExecStart argument: `%` and `$` escaped (specifiers, variables), quoted if needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(command: list[str]) -> str:
    return (
        "[Unit]\n"
        "Description=jupyter-mlx-manager: the shared MLX model service (jupyter mlx-manager serve)\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={' '.join(_systemd_quote(a) for a in command)}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_agent(command: list[str], home: Path) -> str:
    log = str(home / "Library" / "Logs" / "jupyter-mlx-manager.log")
    agent = {
        "Label": LABEL,
        "ProgramArguments": command,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted after a crash, not after a clean stop
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    return plistlib.dumps(agent).decode()


def install(
    serve_args: list[str], platform: str = sys.platform, home: Path | None = None, environ: dict[str, str] | None = None
) -> ServiceFiles:
    """Write (and print) the service definition that runs `serve serve_args` at login."""
    home = home or Path.home()
    files = service_files(platform, home, dict(os.environ if environ is None else environ))
    command = serve_command(serve_args)
    text = launchd_agent(command, home) if platform == "darwin" else systemd_unit(command)
    files.definition.parent.mkdir(parents=True, exist_ok=True)
    files.definition.write_text(text)
    if files.enabled_link is not None:
        files.enabled_link.parent.mkdir(parents=True, exist_ok=True)
        files.enabled_link.unlink(missing_ok=True)
        files.enabled_link.symlink_to(os.path.relpath(files.definition, files.enabled_link.parent))
    print(f"# {files.definition}")
    print(text)
    print(f"wrote {files.definition}: `jupyter mlx-manager serve` will start at your next login.")
    print(f"start it now with: {files.start_now}")
    return files


def uninstall(platform: str = sys.platform, home: Path | None = None, environ: dict[str, str] | None = None) -> bool:
    """Remove the service definition (and its enabling link); False if none was installed."""
    files = service_files(platform, home or Path.home(), dict(os.environ if environ is None else environ))
    found = files.definition.exists()
    if files.enabled_link is not None and files.enabled_link.is_symlink():
        files.enabled_link.unlink()
    files.definition.unlink(missing_ok=True)
    if found:
        print(f"removed {files.definition}; a service started this session keeps running: {files.stop_now}")
    else:
        print(f"no service was installed ({files.definition} does not exist)")
    return found
