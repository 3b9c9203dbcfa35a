"""The main job: ``apimw-async demo`` against the embedded fake server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from apimw_async.cli import main
from apimw_async.demo import DemoConfig, format_table, run_demo


async def test_demo_crosses_expiry_without_errors() -> None:
    result = await run_demo(
        DemoConfig(workers=30, duration=1.5, token_lifetime=0.5, token_latency=0.01, seed=3)
    )
    assert result.requests > 0
    assert result.errors == 0
    assert result.app_401s == 0
    assert result.refresh_reuse == 0
    assert result.token_calls >= 1
    assert result.refresh_calls >= 1
    # The cold start waits (every worker needs the first token), counted apart from waits
    # while a valid token was held. (Those are not asserted to be 0: with 0.5-s tokens the
    # refresh window is 0.1 s of real time, which a loaded machine can overrun; the counter
    # exists to show exactly that. The state tests check it on the fake clock.)
    assert result.waits_without_valid_token >= 1
    assert result.waits == result.waits_without_valid_token + result.waits_with_valid_token
    table = format_table(result)
    for label in (
        "requests done",
        "token calls",
        "refresh calls",
        "re-authentications",
        "401s seen by the app",
        "p50 / p99",
        "waits for a first token (none valid)",
        "waits while a valid token was held",
    ):
        assert label in table


def test_demo_json_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "demo",
            "--json",
            "--workers",
            "10",
            "--duration",
            "0.5",
            "--token-lifetime",
            "0.4",
            "--fail-500",
            "0.2",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["errors"] == 0
    assert data["config"]["fail_500"] == 0.2
    for key in (
        "requests",
        "token_calls",
        "refresh_calls",
        "reauthentications",
        "app_401s",
        "waits_without_valid_token",
        "waits_with_valid_token",
        "p50_ms",
        "p99_ms",
    ):
        assert key in data


def test_python_dash_m_runs_the_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "apimw_async", "demo", "--workers", "5", "--duration", "0.3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "requests done" in proc.stdout


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--fail-500", "2"])
    assert main(["demo", "--workers", "0"]) == 2
