"""RedisTokenStore against a real redis-server (fixtures in tests/conftest_redis.py)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("redis")

import redis

from apimw_async import ConfigurationError, StoreUnavailableError, TokenManager
from apimw_async.stores import StoredToken, TokenStore
from apimw_async.stores.redis import KEY_TTL_GRACE, RedisRateLimiter, RedisTokenStore
from apimw_async.testing import FakeAPIMW

from .redis_server import RedisServer

KEY = "0123456789abcdef0123456789abcdef"
NOW = time.time()


def pair(
    version: int, *, refresh: str | None = "rt_refresh", access: str = "eyJ.access"
) -> StoredToken:
    return StoredToken(
        access_token=f"{access}.{version}",
        token_type="Bearer",
        expires_in=3600.0,
        refresh_token=None if refresh is None else f"{refresh}_{version}",
        issued_at=time.time(),
        refresh_issued_at=time.time(),
        version=version,
    )


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    yield client
    client.close()


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> Any:
    async with RedisTokenStore.from_url(redis_url, prefix=redis_prefix) as s:
        yield s


def other(redis_url: str, prefix: str, **options: Any) -> RedisTokenStore:
    """Another process's store, as far as Redis can tell (its own connections)."""
    return RedisTokenStore.from_url(redis_url, prefix=prefix, **options)


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


# --- protocol, compare-and-set ----------------------------------------------------------------


async def test_is_a_token_store(store: RedisTokenStore) -> None:
    assert isinstance(store, TokenStore)
    assert await store.load(KEY) is None


async def test_save_is_a_compare_and_set_on_the_version(
    store: RedisTokenStore, redis_url: str, redis_prefix: str
) -> None:
    rival = other(redis_url, redis_prefix)
    try:
        assert await store.save(KEY, pair(1), expected_version=0)
        # A second writer that also saw nothing stored loses: no overwrite.
        assert not await rival.save(KEY, pair(1, access="eyJ.rival"), expected_version=0)
        loaded = await rival.load(KEY)
        assert loaded == pair(1) or (loaded is not None and loaded.access_token == "eyJ.access.1")
        assert await rival.save(KEY, pair(2), expected_version=1)
        # Fencing: a writer whose view is one version old gets False, and nothing changes.
        assert not await store.save(KEY, pair(2, access="eyJ.stale"), expected_version=1)
        assert not await store.save(KEY, pair(1, access="eyJ.stale"), expected_version=0)
        loaded = await store.load(KEY)
        assert loaded is not None
        assert (loaded.version, loaded.access_token) == (2, "eyJ.access.2")
        assert loaded.refresh_token == "rt_refresh_2"
    finally:
        await rival.aclose()


async def test_save_rejects_a_version_that_is_not_the_next(store: RedisTokenStore) -> None:
    with pytest.raises(ValueError, match="expected_version"):
        await store.save(KEY, pair(3), expected_version=1)
    assert await store.load(KEY) is None


async def test_spent_marker_round_trip(store: RedisTokenStore) -> None:
    first = pair(1)
    assert await store.save(KEY, first, expected_version=0)
    assert await store.save(KEY, first.spent(), expected_version=1)
    loaded = await store.load(KEY)
    assert loaded is not None
    assert loaded.refresh_token is None
    assert loaded.version == 2
    assert loaded.access_token == first.access_token


async def test_stored_pair_expires_after_the_refresh_token_life(
    store: RedisTokenStore, raw: redis.Redis
) -> None:
    with_refresh = pair(1)
    assert await store.save(KEY, with_refresh, expected_version=0)
    ttl = raw.pttl(store.token_key(KEY)) / 1000
    assert 30 * 24 * 3600 < ttl <= 30 * 24 * 3600 + KEY_TTL_GRACE + 1
    # Without a refresh token the pair is worth keeping only until the access token expires.
    assert await store.save(KEY, with_refresh.spent(), expected_version=1)
    ttl = raw.pttl(store.token_key(KEY)) / 1000
    assert 3600 < ttl <= 3600 + KEY_TTL_GRACE + 1


# --- leases -----------------------------------------------------------------------------------


async def test_lease_is_exclusive_and_only_its_owner_renews_or_releases(
    store: RedisTokenStore, redis_url: str, redis_prefix: str, raw: redis.Redis
) -> None:
    rival = other(redis_url, redis_prefix)
    try:
        owner = await store.acquire_lease(KEY, 5.0)
        assert owner is not None
        assert await rival.acquire_lease(KEY, 5.0) is None
        assert await store.acquire_lease(KEY, 5.0) is None  # not re-entrant either

        assert not await rival.renew_lease(KEY, "someone-else", 60.0)
        await rival.release_lease(KEY, "someone-else")
        assert raw.get(store.lease_key(KEY)) == owner.encode()

        assert await rival.renew_lease(KEY, owner, 60.0)  # the owner id is the capability
        assert raw.pttl(store.lease_key(KEY)) > 5000

        await store.release_lease(KEY, owner)
        assert raw.exists(store.lease_key(KEY)) == 0
        assert not await store.renew_lease(KEY, owner, 5.0)
        second = await rival.acquire_lease(KEY, 5.0)
        assert second is not None
        assert second != owner
        await store.release_lease(KEY, owner)  # a stale owner never releases the new lease
        assert raw.get(store.lease_key(KEY)) == second.encode()
    finally:
        await rival.aclose()


async def test_lease_expires_on_its_own(store: RedisTokenStore, raw: redis.Redis) -> None:
    owner = await store.acquire_lease(KEY, 0.2)
    assert owner is not None
    assert 0 < raw.pttl(store.lease_key(KEY)) <= 200

    async def gone() -> bool:
        return raw.exists(store.lease_key(KEY)) == 0

    await eventually(gone)
    assert not await store.renew_lease(KEY, owner, 5.0)  # lost: renewing does not revive it
    taken_over = await store.acquire_lease(KEY)  # the store's default lease_ttl
    assert taken_over is not None
    assert 0 < raw.pttl(store.lease_key(KEY)) <= store.lease_ttl * 1000
    await store.release_lease(KEY, owner)
    assert raw.get(store.lease_key(KEY)) == taken_over.encode()


# --- wait_for_update --------------------------------------------------------------------------


@pytest.mark.parametrize("notifications", [True, False], ids=["pubsub", "polling"])
async def test_wait_for_update_wakes_on_save(
    redis_url: str, redis_prefix: str, notifications: bool
) -> None:
    waiter_store = other(redis_url, redis_prefix, notifications=notifications)
    writer = other(redis_url, redis_prefix)
    try:
        assert await writer.save(KEY, pair(1), expected_version=0)
        owner = await writer.acquire_lease(KEY, 30.0)
        assert owner is not None
        waiters = [
            asyncio.ensure_future(waiter_store.wait_for_update(KEY, 1, 30.0)) for _ in range(50)
        ]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiters)  # version unchanged, lease held: waiting
        started = time.monotonic()
        assert await writer.save(KEY, pair(2), expected_version=1)
        await asyncio.wait_for(asyncio.gather(*waiters), 10.0)
        # Woken by the save, long before the 30-s timeout (and before the safety poll).
        assert time.monotonic() - started < 10.0
    finally:
        await waiter_store.aclose()
        await writer.aclose()


async def test_wait_for_update_returns_at_once_if_the_version_already_differs(
    store: RedisTokenStore,
) -> None:
    assert await store.save(KEY, pair(1), expected_version=0)
    assert await store.acquire_lease(KEY, 30.0) is not None
    await asyncio.wait_for(store.wait_for_update(KEY, 0, 30.0), 5.0)


async def test_wait_for_update_times_out(store: RedisTokenStore) -> None:
    assert await store.acquire_lease(KEY, 30.0) is not None
    started = time.monotonic()
    await store.wait_for_update(KEY, 0, 0.3)
    assert time.monotonic() - started >= 0.29


@pytest.mark.parametrize("notifications", [True, False], ids=["pubsub", "polling"])
async def test_wait_for_update_returns_when_the_lease_is_released_or_lapses(
    redis_url: str, redis_prefix: str, notifications: bool
) -> None:
    waiter_store = other(redis_url, redis_prefix, notifications=notifications)
    holder = other(redis_url, redis_prefix)
    try:
        owner = await holder.acquire_lease(KEY, 30.0)
        assert owner is not None
        waiting = asyncio.ensure_future(waiter_store.wait_for_update(KEY, 0, 30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await holder.release_lease(KEY, owner)  # gave up without saving
        await asyncio.wait_for(waiting, 10.0)

        assert await holder.acquire_lease(KEY, 0.3) is not None  # dies holding it
        await asyncio.wait_for(waiter_store.wait_for_update(KEY, 0, 30.0), 10.0)
    finally:
        await waiter_store.aclose()
        await holder.aclose()


async def test_waiters_of_one_loop_share_one_subscription(
    store: RedisTokenStore, raw: redis.Redis
) -> None:
    assert await store.acquire_lease(KEY, 30.0) is not None
    before = len(raw.client_list(_type="pubsub"))
    waiters = [asyncio.ensure_future(store.wait_for_update(KEY, 0, 1.0)) for _ in range(200)]
    await asyncio.sleep(0.3)
    assert len(raw.client_list(_type="pubsub")) - before == 1
    await asyncio.gather(*waiters)


# --- values at rest ---------------------------------------------------------------------------


async def test_encryption_round_trip_and_a_wrong_key_reads_as_absent(
    redis_url: str, redis_prefix: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    key_a, key_b = fernet.Fernet.generate_key(), fernet.Fernet.generate_key()
    store_a = other(redis_url, redis_prefix, encryption_key=key_a)
    store_b = other(redis_url, redis_prefix, encryption_key=key_b)
    plain = other(redis_url, redis_prefix)
    rotated = other(redis_url, redis_prefix, encryption_key=[key_b, key_a])
    try:
        assert store_a.encrypted
        assert not plain.encrypted
        token = pair(1)
        assert await store_a.save(KEY, token, expected_version=0)
        stored = raw.hget(store_a.token_key(KEY), "d")
        assert stored is not None
        assert b"eyJ.access" not in stored
        assert b"rt_refresh" not in stored
        loaded = await store_a.load(KEY)
        assert loaded is not None
        assert loaded.to_json() == token.to_json()
        rotated_view = await rotated.load(KEY)  # MultiFernet: new key first, old still read
        assert rotated_view is not None
        assert rotated_view.access_token == token.access_token

        with caplog.at_level(logging.WARNING, logger="apimw_async"):
            assert await store_b.load(KEY) is None
        assert "unreadable" in caplog.text
        assert "eyJ.access" not in caplog.text
        assert "rt_refresh" not in caplog.text
        # Treated as absent means absent: the unreadable pair is gone, version 0 again.
        assert raw.exists(store_a.token_key(KEY)) == 0
        assert await store_b.save(KEY, pair(1), expected_version=0)
        assert await plain.load(KEY) is None  # an unencrypted reader cannot read it either
    finally:
        for s in (store_a, store_b, plain, rotated):
            await s.aclose()


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"format": 99}', b'{"format": 1, "access_token": 5}', b"\xff\xfe"],
    ids=["garbage", "format", "shape", "bytes"],
)
async def test_a_corrupted_value_reads_as_absent(
    store: RedisTokenStore, raw: redis.Redis, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    raw.hset(store.token_key(KEY), mapping={"v": "7", "d": value})
    with caplog.at_level(logging.WARNING, logger="apimw_async"):
        assert await store.load(KEY) is None
    assert "unreadable" in caplog.text
    assert await store.save(KEY, pair(1), expected_version=0)
    loaded = await store.load(KEY)
    assert loaded is not None
    assert loaded.version == 1


async def test_a_value_whose_version_disagrees_reads_as_absent(
    store: RedisTokenStore, raw: redis.Redis
) -> None:
    raw.hset(store.token_key(KEY), mapping={"v": "5", "d": pair(1).to_json()})
    assert await store.load(KEY) is None


# --- failures ---------------------------------------------------------------------------------


async def test_store_unavailable_when_redis_is_down_and_back_when_it_returns(
    redis_server: RedisServer,
) -> None:
    store = RedisTokenStore.from_url(redis_server.url, prefix="outage")
    try:
        assert await store.save(KEY, pair(1), expected_version=0)
        owner = await store.acquire_lease(KEY, 5.0)
        assert owner is not None
        redis_server.stop(kill=True)
        started = time.monotonic()
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: store.load(KEY),
            lambda: store.save(KEY, pair(2), expected_version=1),
            lambda: store.acquire_lease(KEY, 5.0),
            lambda: store.renew_lease(KEY, owner, 5.0),
            lambda: store.release_lease(KEY, owner),
            lambda: store.wait_for_update(KEY, 1, 5.0),
            store.ping,
        ]
        for operation in operations:
            with pytest.raises(StoreUnavailableError) as caught:
                await operation()
            assert isinstance(caught.value.__cause__, (redis.RedisError, OSError))
        # Noticed fast: refused connections, no long retry loops.
        assert time.monotonic() - started < 15.0

        redis_server.start()  # same port, empty database
        assert await store.load(KEY) is None
        assert await store.save(KEY, pair(1), expected_version=0)
        assert await store.acquire_lease(KEY, 5.0) is not None
    finally:
        await store.aclose()


async def test_a_closed_store_is_unavailable(redis_url: str, redis_prefix: str) -> None:
    store = other(redis_url, redis_prefix)
    await store.ping()
    await store.aclose()
    assert store.closed
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.load(KEY)


# --- event loops, threads, fork ---------------------------------------------------------------


def test_one_store_works_across_repeated_asyncio_run(redis_url: str, redis_prefix: str) -> None:
    store = other(redis_url, redis_prefix)

    async def step(version: int) -> None:
        assert await store.save(KEY, pair(version), expected_version=version - 1)
        await store.wait_for_update(KEY, version - 1, 1.0)
        loaded = await store.load(KEY)
        assert loaded is not None
        assert loaded.version == version

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unclosed client would warn
        for version in range(1, 4):
            asyncio.run(step(version))

    async def close() -> None:
        await store.aclose()

    asyncio.run(close())


def test_one_store_serves_event_loops_in_several_threads(redis_url: str, redis_prefix: str) -> None:
    store = other(redis_url, redis_prefix)
    errors: list[BaseException] = []
    leases: list[str | None] = []

    def run() -> None:
        async def work() -> None:
            leases.append(await store.acquire_lease(KEY, 30.0))
            await store.ping()

        try:
            asyncio.run(work())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sum(owner is not None for owner in leases) == 1


def _child_loads(store: RedisTokenStore) -> None:
    async def load() -> None:
        token = await store.load(KEY)
        assert token is not None
        assert token.version == 1
        assert await store.save(KEY, pair(2), expected_version=1)

    asyncio.run(load())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_connections(redis_url: str, redis_prefix: str) -> None:
    store = other(redis_url, redis_prefix)

    async def parent_first() -> None:
        assert await store.save(KEY, pair(1), expected_version=0)

    async def parent_after() -> None:
        loaded = await store.load(KEY)
        assert loaded is not None
        assert loaded.version == 2
        await store.aclose()

    # A long-lived parent loop whose client the child inherits (but must not use).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(parent_first())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            child = multiprocessing.get_context("fork").Process(target=_child_loads, args=(store,))
            child.start()
        child.join(30)
        assert child.exitcode == 0
        loop.run_until_complete(parent_after())  # the parent's connections still work
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# --- hygiene ----------------------------------------------------------------------------------


async def test_keys_and_values_never_hold_the_api_key(
    redis_url: str, redis_prefix: str, raw: redis.Redis
) -> None:
    async with FakeAPIMW() as fake, other(redis_url, redis_prefix) as store:
        async with TokenManager(fake.credentials, base_url=fake.base_url, store=store) as tm:
            await tm.get_token()
        keys = list(raw.scan_iter(match=f"{redis_prefix}:*"))
        assert keys
        api_key, secret = fake.credentials.api_key, fake.credentials.api_secret
        for key in keys:
            assert api_key.encode() not in key
            for value in raw.hvals(key) if raw.type(key) == b"hash" else [raw.get(key) or b""]:
                assert api_key.encode() not in value
                assert secret.encode() not in value
    with pytest.raises(ValueError, match="hash"):
        store.token_key(api_key)


def test_repr_shows_server_and_prefix_but_no_secret() -> None:
    store = RedisTokenStore.from_url("redis://worker:s3cr3t@redis.internal:6380/2", prefix="p")
    text = repr(store)
    assert "s3cr3t" not in text
    assert "worker" not in text
    assert "redis.internal:6380/2" in text
    assert "'p'" in text


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        RedisTokenStore()
    with pytest.raises(ConfigurationError):
        RedisTokenStore("redis://localhost", client_factory=lambda: redis.asyncio.Redis())
    with pytest.raises(ConfigurationError):
        RedisTokenStore("http://localhost")
    with pytest.raises(ConfigurationError):
        RedisTokenStore("redis://localhost", prefix="has space")
    with pytest.raises(ConfigurationError):
        RedisTokenStore("redis://localhost", encryption_key=b"not a fernet key")
    with pytest.raises(ConfigurationError):
        RedisTokenStore("redis://localhost", cipher=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "has space", "a{b}", 5])
def test_store_and_limiter_refuse_the_same_prefixes(prefix: Any) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisTokenStore("redis://localhost", prefix=prefix)
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisRateLimiter("redis://localhost", per_minute=1, prefix=prefix)


@pytest.mark.parametrize("key", ["", "a b", "a{b}", "ak_live_x", "x" * 201])
def test_store_and_limiter_refuse_the_same_keys(key: str) -> None:
    store = RedisTokenStore("redis://localhost")
    limiter = RedisRateLimiter("redis://localhost", per_minute=1)
    with pytest.raises(ValueError, match="store key"):
        store.token_key(key)
    with pytest.raises(ValueError, match="rate-limiter key"):
        limiter.keys(key)


async def test_a_client_factory_is_called_once_per_loop(redis_url: str, redis_prefix: str) -> None:
    made: list[redis.asyncio.Redis] = []

    def factory() -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(redis_url)
        made.append(client)
        return client

    async with RedisTokenStore(client_factory=factory, prefix=redis_prefix) as store:
        assert "client_factory" in repr(store)
        assert await store.save(KEY, pair(1), expected_version=0)
        assert await store.load(KEY) is not None
    assert len(made) == 1
