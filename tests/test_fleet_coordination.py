"""The fleet side of the token manager (stores._fleet.Fleet): revocation shared through the store,
a lease renewed while its holder works and scaled down for short tokens, a WARNING while a
process waits on another's lease.

Time is a FakeClock (leases of MemoryTokenStore expire on it); the revocation tests run on one
real redis-server: managers in this process with their own connections, and a spawned second
process (tests/fleet_worker.py) driven step by step through a pipe.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import random
import uuid
from typing import Any

import pytest
from aiohttp import web

from apimw_async import FakeClock, TokenManager
from apimw_async._config import STORE_CHECK_INTERVAL
from apimw_async.stores import MemoryTokenStore
from apimw_async.testing import FakeAPIMW

from .conftest import drive
from .fleet_worker import revocation_main

HANG_GUARD = 60.0


class RecordingStore(MemoryTokenStore):
    """Records lease lengths and renewals; ``dead`` owners release nothing (SIGKILLed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ttls: list[float] = []
        self.renewals = 0
        self.renewed = asyncio.Event()
        self.dead: set[str] = set()
        self.owners: list[str] = []

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        owner = await super().acquire_lease(key, ttl)
        if owner is not None:
            self.ttls.append(ttl)
            self.owners.append(owner)
        return owner

    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        held = await super().renew_lease(key, owner, ttl)
        if held:
            self.renewals += 1
            self.renewed.set()
        return held

    async def release_lease(self, key: str, owner: str) -> None:
        if owner not in self.dead:
            await super().release_lease(key, owner)


def manager(fake: FakeAPIMW, store: Any, clock: FakeClock, seed: int) -> TokenManager:
    return TokenManager(
        fake.credentials,
        base_url=fake.base_url,
        store=store,
        clock=clock,
        rng=random.Random(seed),
    )


async def in_flight(tm: TokenManager) -> asyncio.Task[Any]:
    task = tm._state().inflight
    assert task is not None
    return task


# --- the lease --------------------------------------------------------------------------------


@pytest.mark.parametrize(("lifetime", "lease"), [(2.0, 1.0), (20.0, 5.0), (3600.0, 8.0)])
async def test_the_lease_is_scaled_to_the_token_lifetime(
    clock: FakeClock, lifetime: float, lease: float
) -> None:
    async with FakeAPIMW(clock=clock, token_lifetime=lifetime) as fake:
        store = RecordingStore(clock=clock)
        tm = manager(fake, store, clock, 0)
        await tm.get_token()  # cold: the longest lease (no lifetime known yet)
        clock.advance(lifetime)
        await tm.get_token()
        assert store.ttls == [8.0, lease]
        await tm.aclose()


async def test_a_killed_lease_holder_stalls_a_short_token_fleet_about_one_second(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeAPIMW(clock=clock, token_lifetime=2.0, reuse_detection=True) as fake:
        store = RecordingStore(clock=clock)
        a, b = manager(fake, store, clock, 1), manager(fake, store, clock, 2)
        await a.get_token()
        await b.get_token()
        clock.advance(2.0)  # both expired
        # a takes the lease, spends the stored refresh token and sends it; then it is killed.
        fake.faults.add("refresh", "delay", delay=30.0)
        dying = asyncio.create_task(a.get_token())
        await asyncio.wait_for(fake.wait_until(lambda s: s.refresh_calls == 1), HANG_GUARD)
        store.dead.add(store.owners[-1])
        await a.aclose()
        await asyncio.gather(dying, return_exceptions=True)

        caplog.set_level(logging.WARNING, logger="apimw_async")
        start = clock.monotonic()
        [token] = await asyncio.wait_for(drive(clock, b.get_token()), HANG_GUARD)
        assert not isinstance(token, BaseException)
        stalled = clock.monotonic() - start
        assert store.ttls[-2] == 1.0  # a's lease: a quarter of 2 s, at least 1 s
        assert stalled <= 1.0 + 0.01  # not the 8 s of a lease sized for the request timeout
        warnings = [r for r in caplog.records if "holds the refresh lease" in r.getMessage()]
        assert warnings, "nothing logged while waiting on a dead holder's lease"
        assert all(r.levelno == logging.WARNING for r in warnings)
        # b found the refresh token spent by a: the credentials, never a reuse.
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.token_calls == 2
        await b.aclose()


async def test_the_lease_is_renewed_while_its_holder_works(clock: FakeClock) -> None:
    async with FakeAPIMW(clock=clock, token_lifetime=2.0, reuse_detection=True) as fake:
        store = RecordingStore(clock=clock)
        a = manager(fake, store, clock, 1)
        await a.get_token()
        clock.advance(2.0)
        fake.faults.add("refresh", "delay", delay=30.0)  # a slow refresh: a holds the lease
        holder = asyncio.create_task(a.get_token())
        await asyncio.wait_for(fake.wait_until(lambda s: s.refresh_calls == 1), HANG_GUARD)
        key = a._store_key
        # Three lease lengths pass while a works; each renewal restarts the lease.
        for _ in range(6):
            store.renewed.clear()
            clock.advance(0.5)
            await asyncio.wait_for(store.renewed.wait(), HANG_GUARD)
        assert store.renewals >= 6
        assert await store.acquire_lease(key, 1.0) is None  # still a's
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        await a.aclose()
        assert await store.acquire_lease(key, 1.0) is not None  # released when it stopped


# --- revocation -------------------------------------------------------------------------------


async def test_revoke_reaches_every_process_through_the_store(
    clock: FakeClock, redis_url: str
) -> None:
    from apimw_async.stores.redis import RedisTokenStore

    prefix = f"apimw-revoke-{uuid.uuid4().hex[:10]}"
    async with FakeAPIMW(clock=clock, reuse_detection=True) as fake:
        stores = [RedisTokenStore.from_url(redis_url, prefix=prefix) for _ in range(3)]
        a, b, c = (manager(fake, store, clock, i) for i, store in enumerate(stores))
        revoked = await a.get_token()
        assert (await b.get_token()).access_token == revoked.access_token  # adopted
        assert b.stats.adopted == 1

        assert await a.revoke()
        clock.advance(1.0)

        # A process that needs a token now does not adopt the revoked pair (nor send its
        # refresh token): it gets a new one.
        fresh = await c.get_token()
        assert fresh.access_token != revoked.access_token
        assert fake.stats.refresh_calls == 0

        # b holds the revoked token in memory; at its next look at the store it drops it.
        clock.advance(STORE_CHECK_INTERVAL)
        assert (await b.get_token()).access_token == revoked.access_token  # (checks meanwhile)
        await asyncio.wait_for(asyncio.gather(*b._state().hooks), HANG_GUARD)
        assert (await b.get_token()).access_token == fresh.access_token

        assert fake.stats.unauthorized == 0
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.invalid_refresh == 0
        for tm in (a, b, c):
            await tm.aclose()
        for store in stores:
            await store.aclose()


class BearerRecordingFake(FakeAPIMW):
    """The fake server, also recording the bearer token of every request, in order."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bearers: list[tuple[str, str | None]] = []

    def _bearer(self, request: web.Request) -> tuple[str | None, Any]:
        bearer, failure = super()._bearer(request)
        self.bearers.append((request.path.rsplit("/", 1)[-1], bearer))
        return bearer, failure


async def receive(conn: Any, expected: str) -> Any:
    """The worker's next message, which must be ``expected`` (read off the event loop)."""
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, conn.poll, HANG_GUARD), f"no {expected!r} in time"
    kind, payload = conn.recv()
    assert kind == expected, payload
    return payload


@pytest.mark.apimw_clock(auto_advance=False)
async def test_revoke_is_seen_by_a_second_process(
    clock: FakeClock, redis_url: str, redis_prefix: str
) -> None:
    """A spawned process holds the shared pair; this one revokes it. At its next look at the
    store the other process drops the pair: the server never sees the revoked access token from
    it again, nor the pair's refresh token (the worker's clock is moved to that look by message,
    not waited for)."""
    from apimw_async.stores.redis import RedisTokenStore

    fake = BearerRecordingFake(clock=clock, reuse_detection=True)
    async with fake:
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        config = {
            "base_url": fake.base_url,
            "api_key": fake.credentials.api_key,
            "api_secret": fake.credentials.api_secret,
            "redis_url": redis_url,
            "prefix": redis_prefix,
            "calls_after": 10,
        }
        worker = ctx.Process(target=revocation_main, args=(config, child_conn), name="revoker")
        worker.start()
        child_conn.close()
        store = RedisTokenStore.from_url(redis_url, prefix=redis_prefix)
        tm = manager(fake, store, clock, 0)
        try:
            await receive(conn, "holding")
            [(_, held)] = fake.bearers  # the worker's one API call so far
            assert fake.stats.token_calls == 1

            revoked = await tm.get_token()
            assert revoked.access_token == held  # the shared pair, adopted
            assert tm.stats.adopted == 1
            assert await tm.revoke()
            assert not fake.is_access_token_valid(held)
            assert fake.bearers[-1] == ("revoke", held)
            revoked_at = len(fake.bearers)

            conn.send("revoked")
            stats = await receive(conn, "done")
            await asyncio.get_running_loop().run_in_executor(None, worker.join, HANG_GUARD)
            assert worker.exitcode == 0

            after = fake.bearers[revoked_at:]
            assert len(after) == 10  # the worker's calls after it saw the revocation
            assert all(token is not None and token != held for _, token in after)
            fresh = after[0][1]
            assert {token for _, token in after} == {fresh}  # one new pair for all of them
            assert fake.stats.unauthorized == 0  # no request with the revoked token got a 401
            assert fake.stats.refresh_calls == 0  # the revoked pair's refresh token: never sent
            assert fake.stats.token_calls == 2  # the new pair: from the credentials, once
            assert stats["token_calls"] == 2
            assert stats["refresh_calls"] == 0
            assert stats["invalidations"] == 0  # learnt from the store, not from a 401

            # The worker shared its new pair: this process adopts it.
            assert (await tm.get_token()).access_token == fresh
            assert fake.stats.token_calls == 2
        finally:
            conn.close()
            if worker.exitcode is None:
                worker.kill()
            worker.join(10)
            await tm.aclose()
            await store.aclose()


async def test_a_refused_refresh_then_the_credentials_outlast_no_lease(
    clock: FakeClock, redis_url: str
) -> None:
    """The worst attempt under one lease: a refused refresh, then the credentials, each slow.
    Together they take longer than the lease; renewed, it does not lapse, so the waiting
    process adopts the holder's pair instead of calling the token endpoint itself."""
    from apimw_async.stores.redis import RedisTokenStore

    prefix = f"apimw-renew-{uuid.uuid4().hex[:10]}"
    async with FakeAPIMW(reuse_detection=True, token_latency=0.8) as fake:
        stores = [RedisTokenStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
        a, b = (
            TokenManager(
                fake.credentials,
                base_url=fake.base_url,
                store=store,
                clock=clock,
                request_timeout=1.0,
                lease_ttl=1.4,  # < 0.8 s refused refresh + 0.8 s credentials
                rng=random.Random(i),
            )
            for i, store in enumerate(stores)
        )
        await a.get_token()
        await b.get_token()
        assert fake.stats.token_calls == 1
        fake.revoke_refresh_tokens()
        clock.advance(3600)  # both need a new token; a goes first
        holder = asyncio.create_task(a.get_token())
        await asyncio.wait_for(fake.wait_until(lambda s: s.refresh_calls == 1), HANG_GUARD)
        token = await asyncio.wait_for(b.get_token(), HANG_GUARD)
        assert token.access_token == (await holder).access_token
        assert fake.stats.token_calls == 2  # a's fallback only; b waited for it
        assert b.stats.adopted == 2
        assert b.stats.token_calls == 0
        assert fake.stats.refresh_reuse == 0
        for tm in (a, b):
            await tm.aclose()
        for store in stores:
            await store.aclose()
