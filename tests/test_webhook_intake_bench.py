"""The webhook-intake benchmark runs and every row answers and handles every delivery.

Timings are never asserted (they are judged in benchmarks/RESULTS.md as ratios of one run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .quick_bench import run_quick_benchmark


def test_webhook_intake_workload_smoke_run(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install '.[redis]')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    stdout, runs = run_quick_benchmark(
        tmp_path,
        "--only",
        "webhook-intake",
    )
    assert "webhook-intake" in stdout
    assert {r["strategy"] for r in runs} == {"memory", "handoff", "redis-queue"}
    for run in runs:
        metrics = run["metrics"]
        assert metrics["errors"] == 0, run
        assert metrics["handled"] == metrics["deliveries"], run
