"""The bounded load test (`benchmarks/load.py`, its CI defaults: 32 streaming clients for 45 s
on the tiny model): no 5xx, no transport error, every answered request in the audit trail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).parent.parent / "benchmarks" / "load.py"


def test_load_keeps_every_invariant(tmp_path):
    report_path = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, str(LOAD), "--out", str(report_path)], capture_output=True, text=True, timeout=400
    )
    assert report_path.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["requests"] > report["clients"], report
    assert report["server_errors"] == 0, report
    assert report["transport_errors"] == 0, report
    assert report["streams_without_done"] == 0, report
    assert report["lost_audit_records"] == 0, report
    assert not report["runner_restarted"], report
    assert result.returncode == 0, result.stderr[-3000:]
