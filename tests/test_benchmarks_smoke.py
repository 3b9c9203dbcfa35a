"""The benchmark harness runs, and our rows keep their correctness numbers.

A smoke run of ``python -m benchmarks`` (quick sizes, one repetition, two workloads, a few
strategies): it checks that the harness works and that apimw_async keeps the counts the issue
asks for (one token call per cold burst, recovery from a lost refresh answer without reuse).
Timings are never asserted: speed is judged in benchmarks/RESULTS.md, as ratios in one run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .quick_bench import run_quick_benchmark

pytest.importorskip("authlib", reason="the benchmark peers come from the bench extra")
pytest.importorskip("azure.core", reason="the benchmark peers come from the bench extra")


def test_quick_benchmark_smoke_run(tmp_path: Path) -> None:
    strategies = "static,naive+lock,apimw_async Client,apimw_async middleware"
    stdout, runs = run_quick_benchmark(
        tmp_path,
        "--only",
        "cold-burst,lost-refresh",
        "--strategies",
        strategies,
    )
    assert "cold-burst" in stdout
    ours = [r for r in runs if r["strategy"].startswith("apimw_async")]
    assert {r["workload"] for r in ours} == {"cold-burst", "lost-refresh"}
    for run in ours:
        metrics = run["metrics"]
        assert metrics["errors"] == 0, run
        assert metrics["app_401"] == 0, run
        if run["workload"] == "cold-burst":
            assert metrics["token_calls"] == 1, run
        else:
            assert metrics["recovered"] is True, run
            assert metrics["refresh_reuse"] == 0, run
            assert metrics["families_revoked"] == 0, run


def test_oversubscription_smoke_run(tmp_path: Path) -> None:
    """The oversubscription workload at one factor: every row runs, ours without errors and
    without a caller waiting for a token while a valid one was held."""
    stdout, runs = run_quick_benchmark(
        tmp_path,
        "--only",
        "oversubscription",
        "--factors",
        "2",
    )
    assert "max vs fair p99.9" in stdout
    assert {r["strategy"] for r in runs} == {
        "static",
        "static+fifo",
        "apimw_async Client",
        "apimw_async middleware+fifo",
        "apimw_async shared session",
    }
    assert {r["variant"].split(", ")[-1] for r in runs} == {"steady token", "2-s tokens"}
    for run in runs:
        metrics = run["metrics"]
        assert metrics["errors"] == 0, run
        assert metrics["requests"] > 0, run
        if run["strategy"].startswith("apimw_async"):
            assert metrics["waits_valid"] == 0, run
            assert metrics["app_401"] == 0, run
