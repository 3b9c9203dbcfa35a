"""Run ``python -m benchmarks --quick`` in a subprocess, for the smoke tests of the harness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_quick_benchmark(tmp_path: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """A quick, unplotted, quiet run with ``args`` (e.g. ``--only``); its stdout and runs.

    Fails the test with the end of stderr when the harness exits non-zero.
    """
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
            *args,
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
    runs: list[dict[str, Any]] = json.loads(out.read_text())["runs"]
    return proc.stdout, runs
