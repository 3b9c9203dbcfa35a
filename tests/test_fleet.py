"""A fleet of processes sharing one token through Redis, against one fake APIMW server.

The server runs in the test's event loop (reuse detection on: a refresh token presented twice
revokes its family); the workers (tests/fleet_worker.py) are separate processes started with
``multiprocessing`` (spawn, or fork for the fork test), each with hundreds of tasks. The
tests count token-endpoint calls, refresh-token reuse and errors seen by the apps; they do
not assert on timings.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

from apimw_async import Client, TokenManager
from apimw_async.stores.redis import RedisTokenStore
from apimw_async.testing import FakeAPIMW

from .fleet_worker import fork_main, worker_main
from .redis_server import RedisServer

PROCESSES = 8
TASKS = 200

pytestmark = pytest.mark.timeout(150)


class Fleet:
    """Worker processes writing their results to ``tmp_path``."""

    def __init__(self, tmp_path: Path, fake: FakeAPIMW, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.base = {
            "base_url": fake.base_url,
            "api_key": fake.credentials.api_key,
            "api_secret": fake.credentials.api_secret,
            "redis_url": redis_url,
            "prefix": f"apimw-fleet-{uuid.uuid4().hex[:10]}",
        }
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._count = 0
        self._keep: list[Any] = []

    def start(self, n: int, **config: Any) -> list[multiprocessing.process.BaseProcess]:
        """Start ``n`` spawned workers that begin together (a barrier)."""
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(n) if n > 1 else None
        self._keep.append(barrier)  # its semaphores must outlive the children's start-up
        started = []
        for _ in range(n):
            path = self.tmp_path / f"worker-{self._count}.json"
            self._count += 1
            process = ctx.Process(
                target=worker_main,
                args=({**self.base, **config}, str(path), barrier),
                name=path.stem,
            )
            process.start()
            started.append(process)
        self.processes.extend(started)
        return started

    def fork(
        self, n: int, client: Client, **config: Any
    ) -> list[multiprocessing.process.BaseProcess]:
        """Fork ``n`` children that keep using ``client`` (made in this process)."""
        ctx = multiprocessing.get_context("fork")
        started = []
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a process with threads may deadlock the child
            # (aiohttp's resolver threads here; the children never touch their locks).
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(n):
                path = self.tmp_path / f"worker-{self._count}.json"
                self._count += 1
                process = ctx.Process(
                    target=fork_main, args=(client, config, str(path)), name=path.stem
                )
                process.start()
                started.append(process)
        self.processes.extend(started)
        return started

    async def join(
        self, processes: list[multiprocessing.process.BaseProcess], timeout: float = 90.0
    ) -> list[dict[str, Any]]:
        """Wait (without blocking the loop serving the fake) and read the results."""
        deadline = time.monotonic() + timeout
        while any(p.exitcode is None for p in processes):
            if time.monotonic() > deadline:
                raise AssertionError("fleet workers did not finish in time")
            await asyncio.sleep(0.05)
        results = []
        for process in processes:
            path = self.tmp_path / f"{process.name}.json"
            result = json.loads(path.read_text()) if path.exists() else {}
            assert process.exitcode == 0, result.get("crash", f"exit code {process.exitcode}")
            assert result.get("ok"), result
            results.append(result)
        return results

    def kill_all(self) -> None:
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
            process.join(10)


@pytest.fixture
def fleet_factory(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(fake: FakeAPIMW, url: str | None = None) -> Fleet:
        fleet = Fleet(tmp_path, fake, url or redis_url)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.kill_all()


def total(results: list[dict[str, Any]], stat: str) -> int:
    return sum(int(r["stats"][stat]) for r in results)


def errors(results: list[dict[str, Any]]) -> list[str]:
    return [e for r in results for e in r["errors"]]


def max_calls(duration: float, lifetime: float) -> float:
    """Most token-endpoint calls a fleet sharing well makes in ``duration`` seconds.

    A refresh starts in the last 20 % (+ up to 25 % jitter) of a lifetime, taken about 5 %
    earlier by a process that adopted the pair (clock skew allowance): so at most one call
    per 0.7 lifetime, plus one for a cold start or a round in flight at either end. A fleet
    refreshing per process would make about ``PROCESSES`` times as many.
    """
    return duration / (lifetime * 0.7) + 2


def assert_no_reuse(fake: FakeAPIMW) -> None:
    stats = fake.stats
    assert stats.refresh_reuse == 0, stats
    assert stats.invalid_refresh == 0, stats
    assert stats.families_revoked == 0, stats


# --- 1. cold start ----------------------------------------------------------------------------


async def test_cold_fleet_makes_exactly_one_token_call(fleet_factory: Any) -> None:
    async with FakeAPIMW(reuse_detection=True, token_latency=0.05) as fake:
        fleet = fleet_factory(fake)
        results = await fleet.join(fleet.start(PROCESSES, tasks=TASKS, api_tasks=10))
        assert errors(results) == []
        assert fake.stats.token_calls == 1, fake.stats
        assert fake.stats.refresh_calls == 0
        assert_no_reuse(fake)
        # Every process used the one token; all but one adopted it from Redis.
        assert {fp for r in results for fp in r["tokens"]} == set(results[0]["tokens"])
        assert len(results[0]["tokens"]) == 1
        assert total(results, "token_calls") == 1
        assert total(results, "adopted") == PROCESSES - 1
        assert sum(r["token_uses"] for r in results) >= PROCESSES * TASKS


# --- 2. many lifetimes ------------------------------------------------------------------------


async def test_fleet_refreshes_about_once_per_token_lifetime(fleet_factory: Any) -> None:
    lifetime, duration = 2.0, 8.0
    async with FakeAPIMW(reuse_detection=True, token_lifetime=lifetime) as fake:
        fleet = fleet_factory(fake)
        results = await fleet.join(
            fleet.start(PROCESSES, tasks=TASKS, api_tasks=10, duration=duration)
        )
        stats = fake.stats
        calls = stats.token_calls + stats.refresh_calls
        lifetimes = duration / lifetime
        print(
            f"\nfleet of {PROCESSES}x{TASKS} over {duration:g}s of {lifetime:g}-s tokens: "
            f"{stats.token_calls} token + {stats.refresh_calls} refresh calls "
            f"({calls / lifetimes:.2f} per lifetime), "
            f"{sum(r['api_calls'] for r in results)} API calls, "
            f"{sum(r['token_uses'] for r in results)} get_token()"
        )
        assert errors(results) == []
        assert_no_reuse(fake)
        assert total(results, "store_outages") == 0
        assert stats.token_calls == 1  # the cold start; every later token came by refresh
        # A new token was needed every lifetime, and the fleet as a whole refreshed about
        # once per token (see max_calls), not once per process.
        assert calls >= lifetimes - 1
        assert calls <= max_calls(duration, lifetime)
        assert total(results, "token_calls") + total(results, "refresh_calls") == calls


# --- 3. a lease holder killed mid-refresh -----------------------------------------------------


async def test_a_holder_killed_mid_refresh_is_taken_over_without_reuse(
    fleet_factory: Any, redis_url: str
) -> None:
    options = {"request_timeout": 5.0, "lease_ttl": 6.0, "deadline": 15.0}
    async with FakeAPIMW(reuse_detection=True, token_lifetime=1.0) as fake:
        fleet = fleet_factory(fake)
        # A first pair in Redis, about to need a refresh.
        store = RedisTokenStore.from_url(redis_url, prefix=fleet.base["prefix"])
        seed = TokenManager(fake.credentials, base_url=fake.base_url, store=store, **options)
        async with store, seed:
            await seed.get_token()
        assert fake.stats.token_calls == 1

        # The victim refreshes; the server rotates the refresh token, then holds the answer.
        fake.faults.add("refresh", "delay", delay=60.0, after=True)
        (victim,) = fleet.start(1, tasks=1, api_tasks=0, duration=120.0, client_options=options)
        await fake.wait_until(lambda s: s.refresh_successes >= 1, timeout=60.0)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)  # dies holding the lease, refresh token spent
        victim.join(10)
        fake.token_lifetime = 3600.0

        # The fleet finds an expired pair whose refresh token is marked spent and a lease held
        # by nobody alive: it waits for the lease to lapse, then one process re-authenticates.
        results = await fleet.join(
            fleet.start(PROCESSES, tasks=TASKS, api_tasks=10, client_options=options)
        )
        assert errors(results) == []
        assert fake.stats.refresh_calls == 1  # the victim's; nobody re-sent its token
        assert fake.stats.token_calls == 2  # the seed and one take-over
        assert_no_reuse(fake)
        assert total(results, "token_calls") == 1
        assert total(results, "refresh_calls") == 0


# --- 4. Redis restarted mid-run ---------------------------------------------------------------


async def test_redis_restart_fails_no_request_and_sharing_resumes(
    fleet_factory: Any, redis_server: RedisServer
) -> None:
    lifetime = 2.0
    async with FakeAPIMW(reuse_detection=True, token_lifetime=lifetime) as fake:
        fleet = fleet_factory(fake, redis_server.url)
        processes = fleet.start(PROCESSES, tasks=TASKS, api_tasks=10, duration=14.0)
        await fake.wait_until(lambda s: s.token_calls >= 1, timeout=60.0)
        await asyncio.sleep(2.0)  # shared operation for a while
        before_outage = fake.stats.token_calls + fake.stats.refresh_calls

        redis_server.stop(kill=True)
        await asyncio.sleep(2.0)  # the outage (workers keep serving requests)
        redis_server.start()  # same port, empty database
        # Managers look at the store again a few seconds after they lost it; then they share.
        await asyncio.sleep(7.0)
        settled = fake.stats.token_calls + fake.stats.refresh_calls
        settled_at = time.monotonic()

        results = await fleet.join(processes)
        window = time.monotonic() - settled_at
        after = fake.stats.token_calls + fake.stats.refresh_calls - settled
        print(
            f"\nbefore outage {before_outage} calls; during outage and recovery "
            f"{settled - before_outage}; after recovery {after} calls in {window:.1f}s "
            f"({after / max(window / lifetime, 1e-9):.2f} per lifetime); outages seen "
            f"{total(results, 'store_outages')}"
        )
        assert errors(results) == []
        assert_no_reuse(fake)
        assert total(results, "store_outages") >= 1
        # Back to sharing: about one call per lifetime for the whole fleet, not one per process.
        assert after <= max_calls(window, lifetime)


# --- 5. a pool forked from a process that already had a client --------------------------------


async def test_a_pool_forked_after_the_client_was_made_works(
    fleet_factory: Any, redis_url: str
) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    lifetime = 2.0
    async with FakeAPIMW(reuse_detection=True, token_lifetime=lifetime) as fake:
        fleet = fleet_factory(fake)
        store = RedisTokenStore.from_url(redis_url, prefix=fleet.base["prefix"])
        async with store, Client(fake.credentials, base_url=fake.base_url, store=store) as client:
            await client.auth.me()  # token, session and Redis connections in this process
            assert fake.stats.token_calls == 1
            results = await fleet.join(
                fleet.fork(PROCESSES, client, tasks=TASKS, api_tasks=5, duration=5.0)
            )
            await client.auth.me()  # the parent's own connections still work
        stats = fake.stats
        assert errors(results) == []
        assert_no_reuse(fake)
        assert total(results, "store_outages") == 0
        # The children crossed expiry together through Redis: about one refresh per lifetime.
        assert stats.token_calls == 1
        assert 1 <= stats.refresh_calls <= max_calls(5.0, lifetime)
