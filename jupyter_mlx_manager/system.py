"""Facts about the machine: the MLX device (probed in a child process) and memory."""

from __future__ import annotations

import asyncio
import json
import sys

import psutil

_DEVICE_PROBE = (
    "import json, mlx.core as mx\n"
    "info = mx.device_info()\n"
    "device = mx.default_device()\n"
    "print(json.dumps({'type': 'gpu' if device.type == mx.gpu else 'cpu',"
    " 'name': info.get('device_name') or info.get('architecture') or str(device),"
    " 'architecture': info.get('architecture'), 'mlx_version': mx.__version__}))\n"
)


async def probe_device() -> dict:
    """Ask MLX in a child process: the server process never imports MLX itself."""
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _DEVICE_PROBE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        if process.returncode == 0:
            return json.loads(out)
        return {"type": "unavailable", "name": "MLX failed to start", "error": err.decode(errors="replace")[-500:]}
    except (TimeoutError, OSError, ValueError) as exc:
        return {"type": "unavailable", "name": "MLX failed to start", "error": str(exc)}


def memory() -> dict:
    vm = psutil.virtual_memory()
    return {"total_bytes": vm.total, "available_bytes": vm.available}


def memory_budget_bytes(max_memory_gb: float) -> int:
    """`max_memory_gb` = 0 means automatic: three quarters of the machine's memory."""
    if max_memory_gb > 0:
        return int(max_memory_gb * 1024**3)
    return int(psutil.virtual_memory().total * 0.75)
