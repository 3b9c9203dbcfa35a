"""The webhook-intake benchmark runs and every row answers and handles every delivery.

Timings are never asserted (they are judged in benchmarks/RESULTS.md as ratios of one run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_webhook_intake_workload_smoke_run(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install '.[redis]')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    out = tmp_path / "bench.json"
    proc = subprocess.run(  # noqa: S603 - our own interpreter and package
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--no-plot",
            "-q",
            "--idle-wait",
            "0",
            "--only",
            "webhook-intake",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "webhook-intake" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    assert {r["strategy"] for r in runs} == {"memory", "handoff", "redis-queue"}
    for run in runs:
        metrics = run["metrics"]
        assert metrics["errors"] == 0, run
        assert metrics["handled"] == metrics["deliveries"], run
