"""Several token managers sharing one store: a fleet of processes, played inside one.

The Redis store has its own tests against a real redis-server (test_redis_store.py,
test_fleet.py); here the manager's side of the protocol is checked with MemoryTokenStore,
with time on a FakeClock.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from apimw_async import Client, FakeClock, StoreUnavailableError, TokenManager
from apimw_async.stores import MemoryTokenStore, StoredToken
from apimw_async.testing import FakeAPIMW

from .conftest import drive


class FlakyStore(MemoryTokenStore):
    """A MemoryTokenStore that can be switched off, like a Redis outage."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.down = False
        self.failures = 0

    def _check(self) -> None:
        if self.down:
            self.failures += 1
            raise StoreUnavailableError("store is down")

    async def load(self, key: str) -> StoredToken | None:
        self._check()
        return await super().load(key)

    async def save(self, key: str, token: StoredToken, *, expected_version: int) -> bool:
        self._check()
        return await super().save(key, token, expected_version=expected_version)

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        self._check()
        return await super().acquire_lease(key, ttl)


def fleet(fake: FakeAPIMW, store: MemoryTokenStore, clock: FakeClock, n: int) -> list[Client]:
    return [
        Client(
            fake.credentials, base_url=fake.base_url, store=store, clock=clock, rng=random.Random(i)
        )
        for i in range(n)
    ]


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.aclose() for c in clients))


async def test_cold_fleet_makes_one_token_call(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    store = MemoryTokenStore(clock=clock)
    clients = fleet(timed_fake, store, clock, 8)
    # No clock driving: waiting for the lease holder takes no (fake) time.
    await asyncio.gather(*(c.auth.me() for c in clients for _ in range(100)))
    assert timed_fake.stats.token_calls == 1
    assert sum(c.tokens.stats.adopted for c in clients) == 7
    assert store.lease_grants == 1
    await close_all(clients)


async def test_fleet_crossing_expiry_refreshes_once_per_token(clock: FakeClock) -> None:
    async with FakeAPIMW(clock=clock, token_lifetime=2.0, reuse_detection=True) as fake:
        store = MemoryTokenStore(clock=clock)
        clients = fleet(fake, store, clock, 8)
        lifetimes, step = 12, 0.1
        for _ in range(round(lifetimes * 2.0 / step)):
            await asyncio.gather(*(c.auth.me() for c in clients for _ in range(5)))
            # Let background refreshes (and their store writes) finish before time moves.
            while any(c.tokens._state().inflight for c in clients):
                await asyncio.gather(
                    *(t for c in clients if (t := c.tokens._state().inflight) is not None)
                )
            clock.advance(step)
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.invalid_refresh == 0
        assert fake.stats.families_revoked == 0
        assert fake.stats.unauthorized == 0
        assert fake.stats.token_calls == 1
        # The fleet as a whole: one refresh per token (every 75–80 % of a lifetime).
        assert lifetimes / 0.8 - 1 <= fake.stats.refresh_calls <= lifetimes / 0.75 + 1
        await close_all(clients)


async def test_a_dead_lease_holder_stalls_the_fleet_only_until_the_lease_expires(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    store = MemoryTokenStore(clock=clock)
    clients = fleet(timed_fake, store, clock, 3)
    await asyncio.gather(*(c.auth.me() for c in clients))
    clock.advance(3600)  # everyone's token expired
    # A "process" took the lease and died without releasing it.
    key = clients[0].tokens._store_key
    assert await store.acquire_lease(key, 8.0) is not None
    start = clock.monotonic()
    # Time moves only while all three managers wait for the lease.
    results = await drive(clock, *(c.auth.me() for c in clients for _ in range(10)), sleepers=3)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert 8.0 <= clock.monotonic() - start <= 10.0
    assert timed_fake.stats.refresh_calls == 1
    assert timed_fake.stats.refresh_reuse == 0
    await close_all(clients)


async def test_holder_dying_mid_refresh_leaves_no_reusable_refresh_token(
    clock: FakeClock,
) -> None:
    async with FakeAPIMW(clock=clock, reuse_detection=True) as fake:
        store = MemoryTokenStore(clock=clock)
        a, b = fleet(fake, store, clock, 2)
        await asyncio.gather(a.auth.me(), b.auth.me())
        clock.advance(3600)
        # a's refresh reaches the server, rotates, and a dies before saving the new pair.
        fake.faults.add("refresh", "delay", delay=30.0, after=True)
        dying = asyncio.create_task(a.auth.me())
        await fake.wait_until(lambda s: s.refresh_successes == 1)
        await a.aclose()  # cancels a's refresh mid-flight
        await asyncio.gather(dying, return_exceptions=True)
        # b must not send the refresh token a already spent: the store says it is spent.
        results = await drive(clock, b.auth.me())
        assert not isinstance(results[0], BaseException)
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.families_revoked == 0
        assert fake.stats.token_calls == 2  # b went to the credentials
        await close_all([a, b])


async def test_store_outage_never_fails_requests_and_sharing_resumes(clock: FakeClock) -> None:
    async with FakeAPIMW(clock=clock, token_lifetime=10.0, reuse_detection=True) as fake:
        store = FlakyStore(clock=clock)
        clients = fleet(fake, store, clock, 4)
        await asyncio.gather(*(c.auth.me() for c in clients))
        assert fake.stats.token_calls == 1
        store.down = True
        failures = []
        for _ in range(40):  # 4 lifetimes with the store down
            results = await asyncio.gather(
                *(c.auth.me() for c in clients for _ in range(3)), return_exceptions=True
            )
            failures += [r for r in results if isinstance(r, BaseException)]
            clock.advance(1.0)
        assert failures == []
        assert store.failures > 0
        assert all(c.tokens.stats.store_outages >= 1 for c in clients)
        assert fake.stats.refresh_reuse == 0  # alone, nobody used a shared refresh token
        store.down = False
        clock.advance(6.0)  # past the store retry interval
        before = fake.stats.token_calls + fake.stats.refresh_calls
        for _ in range(30):
            results = await asyncio.gather(
                *(c.auth.me() for c in clients for _ in range(3)), return_exceptions=True
            )
            failures += [r for r in results if isinstance(r, BaseException)]
            clock.advance(1.0)
        assert failures == []
        calls = fake.stats.token_calls + fake.stats.refresh_calls - before
        # Sharing again: about one call per token for the whole fleet, not one per process.
        assert calls <= 30 / 7.5 + 3
        assert fake.stats.refresh_reuse == 0
        await close_all(clients)


async def test_store_key_is_a_hash_not_the_api_key() -> None:
    store = MemoryTokenStore()
    tm = TokenManager(
        __import__("apimw_async").Credentials("ak_live_secretish_key", "sk_x_123456"),
        base_url="https://api.apimw.com/v1",
        store=store,
    )
    assert "ak_live" not in tm._store_key
    assert len(tm._store_key) == 32


def test_lease_must_outlive_one_attempt() -> None:
    from apimw_async import ConfigurationError, Credentials

    with pytest.raises(ConfigurationError, match="lease_ttl"):
        TokenManager(
            Credentials("ak_1234567890", "sk_1"),
            base_url="https://a.b/v1",
            store=MemoryTokenStore(),
            request_timeout=5,
            lease_ttl=5,
        )


async def test_a_token_refused_by_the_server_is_not_adopted_again_from_the_store(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    store = MemoryTokenStore(clock=clock)
    clients = fleet(timed_fake, store, clock, 4)
    await asyncio.gather(*(c.auth.me() for c in clients))
    timed_fake.expire_access_tokens()  # the server drops the shared token early
    results = await asyncio.gather(*(c.auth.me() for c in clients for _ in range(5)))
    assert len(results) == 20
    assert timed_fake.stats.refresh_calls == 1  # one refresh for the whole fleet
    assert timed_fake.stats.refresh_reuse == 0
    tokens = {c.tokens.token.access_token for c in clients if c.tokens.token}
    assert len(tokens) == 1
    await close_all(clients)


# --- store= is a named parameter of Client ------------------------------------------------------


def test_store_is_a_named_keyword_of_client() -> None:
    import inspect

    parameter = inspect.signature(Client).parameters["store"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default is None
    assert "store" in (Client.__doc__ or "")


async def test_clients_given_one_store_share_one_token(fake: FakeAPIMW, clock: FakeClock) -> None:
    store = MemoryTokenStore(clock=clock)
    first = Client(fake.credentials, base_url=fake.base_url, store=store, clock=clock)
    second = Client(fake.credentials, base_url=fake.base_url, store=store, clock=clock)
    try:
        assert first.tokens.store is store
        assert second.tokens.store is store
        await first.auth.me()
        await second.auth.me()
        assert fake.stats.token_calls == 1
        assert second.tokens.stats.adopted == 1
    finally:
        await close_all([first, second])


async def test_from_env_forwards_the_store(apimw_env: FakeAPIMW) -> None:
    store = MemoryTokenStore()
    async with Client.from_env(store=store) as client:
        assert client.tokens.store is store
        await client.auth.me()
    assert store.saves >= 1
    await store.aclose()  # the client never closes a store it was given


async def test_store_with_a_token_manager_is_refused(fake: FakeAPIMW) -> None:
    from apimw_async import ConfigurationError

    async with TokenManager(fake.credentials, base_url=fake.base_url) as tokens:
        with pytest.raises(ConfigurationError, match="store"):
            Client(token_manager=tokens, store=MemoryTokenStore())
