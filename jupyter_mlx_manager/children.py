"""What every child process of the server does first (runners, jobs): die with the server, and
keep its own protocol streams apart from whatever its libraries print."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO


def exit_with_server() -> None:
    """A child must not outlive the server. Its stdin closing (the server exiting, even by
    SIGKILL) ends its command loop; on Linux the kernel also sends SIGTERM."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if str(os.getppid()) != os.environ.get("JUPYTER_MLX_MANAGER_PARENT_PID", str(os.getppid())):
            os._exit(1)  # the server died before the signal was armed


def protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """The protocol's own file descriptors: private duplicates of stdin and stdout. Then fd 1
    points at stderr and fd 0 at /dev/null, so whatever a library prints (Python `print`, C
    code writing to fd 1) lands in the log instead of corrupting the event stream, and nothing
    can read our commands. The duplicates are not inherited by child processes."""
    sys.stdout.flush()
    commands, events = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return os.fdopen(commands, "rb"), os.fdopen(events, "wb")
