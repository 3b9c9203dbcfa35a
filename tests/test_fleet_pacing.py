"""Acceptance: 8 processes sending as fast as they can through one RedisRateLimiter never let
the server see more than N sends in any window, and one 429 holds all of them back.

The ground truth is the fake server's own record: the wall-clock time at which it accepted
each message (``FakeMessage.sent_at``). The limiter runs on Redis's clock, which on this
machine is the same clock, so the assertions compare the server's record with the cool-down
that Redis recorded; nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

from apimw_async.testing import FakeAPIMW

from .conftest_redis import RedisTarget
from .pacing_worker import worker_main

PROCESSES = 8
COUNT = 10  # sends allowed ...
WINDOW = 1.0  # ... in any window of this many seconds
RETRY_AFTER = 1  # the injected 429's retry_after (seconds): the window resets then


async def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (state of the fake server, no timing assertion) up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def max_in_any_window(times: list[float], window: float) -> int:
    """The most events inside any half-open interval ``[x, x + window)``."""
    times = sorted(times)
    best = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_max_in_any_window() -> None:
    assert max_in_any_window([], 1.0) == 0
    assert max_in_any_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_any_window([0.0, 1.0, 2.0], 1.0) == 1


async def test_a_fleet_never_exceeds_the_window_and_one_429_pauses_it_all(
    fake: FakeAPIMW, redis_target: RedisTarget, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    stop = ctx.Event()
    config = {
        "base_url": fake.base_url,
        "api_key": fake.credentials.api_key,
        "api_secret": fake.credentials.api_secret,
        "redis_url": redis_target.url,
        "cluster": redis_target.cluster,
        "prefix": redis_target.prefix,
        "limits": [(COUNT, WINDOW)],
        "tasks": 4,
    }
    processes = [
        ctx.Process(
            target=worker_main,
            args=(config, str(tmp_path / f"worker-{i}.json"), barrier, stop),
            name=f"worker-{i}",
        )
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        # Two full windows of sending, then one 429 for whichever send comes next.
        await _wait_for(lambda: fake.stats.messages_sent >= 2 * COUNT, "the first sends")
        injected = fake.stats.faults_injected
        fake.faults.add("send", status=429, retry_after=RETRY_AFTER)
        await _wait_for(lambda: fake.stats.faults_injected > injected, "the 429")
        after_429 = fake.stats.messages_sent
        # At most COUNT sends were in flight: one more was started after the cool-down.
        await _wait_for(
            lambda: fake.stats.messages_sent >= after_429 + COUNT + 1,
            "the sends after the cool-down",
        )
        stop.set()
        await _wait_for(lambda: all(p.exitcode is not None for p in processes), "the workers")
    finally:
        stop.set()
        for process in processes:
            if process.exitcode is None:
                process.kill()
            process.join(10)

    results = []
    for process in processes:
        path = tmp_path / f"{process.name}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        assert process.exitcode == 0, result.get("crash", f"exit code {process.exitcode}")
        assert result.get("ok"), result
        results.append(result)
    assert sum(r["error_count"] for r in results) == 0, [r["errors"] for r in results]
    assert sum(r["outages"] for r in results) == 0
    assert all(r["sent"] > 0 for r in results)  # every process took part

    sent_at = [message.sent_at for message in fake.messages.values()]
    assert len(sent_at) == sum(r["sent"] for r in results)
    # The server never saw more than COUNT sends in any WINDOW (and the fleet did push
    # against the limit).
    busiest = max_in_any_window(sent_at, WINDOW)
    assert busiest <= COUNT
    assert busiest >= COUNT // 2

    # Exactly one process met the 429 and set the fleet's cool-down in Redis.
    pauses = [r["last_pause"] for r in results if r["pauses"]]
    assert sum(r["pauses"] for r in results) == 1
    assert len(pauses) == 1
    set_at, until, in_flight = pauses[0]
    assert until - set_at == pytest.approx(RETRY_AFTER)
    # From the moment it was set until the window reset, the server saw only requests that
    # had their slot already (in flight then; the 429's own slot among them), none started
    # later; and sending resumed after the reset.
    during = [at for at in sent_at if set_at <= at < until]
    assert len(during) <= in_flight - 1
    assert any(at >= until for at in sent_at)


def test_the_paced_fleet_example(redis_url: str) -> None:
    root = Path(__file__).resolve().parent.parent
    environ = {k: v for k, v in os.environ.items() if not k.startswith("APIMW_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), environ.get("PYTHONPATH")]))
    proc = subprocess.run(  # noqa: S603 - our own interpreter and example
        [sys.executable, "examples/paced_fleet.py", "--quick", "--redis-url", redis_url],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    busiest = re.search(r"busiest 1-s window +(\d+) of 10 allowed", proc.stdout)
    assert busiest is not None, proc.stdout
    assert int(busiest.group(1)) <= 10
    assert "errors seen by the workers     0" in proc.stdout
