"""RedisRateLimiter against a real redis-server and a real 3-node Redis Cluster, alone and
behind a Client talking to the fake APIMW server (fixtures in tests/conftest_redis.py)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("redis")

from redis.crc import key_slot

from apimw_async import (
    Client,
    ConfigurationError,
    RateLimiter,
    RateLimitError,
    RetryPolicy,
    StoreUnavailableError,
)
from apimw_async.stores import _redis_limiter
from apimw_async.stores.redis import RedisRateLimiter, RedisTokenStore
from apimw_async.testing import FakeAPIMW

from .conftest_redis import RedisTarget
from .redis_server import RedisServer

KEY = "0123456789abcdef0123456789abcdef"
US = 1_000_000


async def redis_now(client: Any) -> int:
    """Redis's clock in µs (on a cluster, some node's: they share this machine's clock)."""
    result = await client.time()
    if isinstance(result, dict):  # RedisCluster may answer per node
        result = next(iter(result.values()))
    return int(result[0]) * US + int(result[1])


@pytest.fixture
async def limiters(redis_target: RedisTarget) -> AsyncIterator[Any]:
    """Make limiters on user-made clients of the target (each its own "process")."""
    made: list[tuple[RedisRateLimiter, Any]] = []

    def make(**options: Any) -> RedisRateLimiter:
        client = redis_target.client()
        limiter = RedisRateLimiter(client=client, prefix=redis_target.prefix, **options)
        made.append((limiter, client))
        return limiter

    yield make
    for limiter, client in made:
        await limiter.aclose()
        await client.aclose()


# --- configuration ------------------------------------------------------------------------


def test_limits_from_named_windows_and_pairs() -> None:
    limiter = RedisRateLimiter.from_url(
        "redis://127.0.0.1:1/0", per_minute=300, per_hour=10_000, per_day=100_000, limits=[(5, 2)]
    )
    assert limiter.limits == ((5, 2.0), (300, 60.0), (10_000, 3600.0), (100_000, 86400.0))
    assert isinstance(limiter, RateLimiter)
    assert repr(limiter) == (
        "RedisRateLimiter(limits=[5/2s, 300/60s, 10000/3600s, 100000/86400s], prefix='apimw')"
    )


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ((), {"per_minute": 10}),
        (("redis://127.0.0.1:1/0",), {}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 0}),
        (("redis://127.0.0.1:1/0",), {"per_minute": True}),
        (("redis://127.0.0.1:1/0",), {"limits": [(10, 0)]}),
        (("redis://127.0.0.1:1/0",), {"limits": [(10,)]}),
        (("redis://127.0.0.1:1/0",), {"limits": [(1.5, 10)]}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 10, "prefix": "a{b}"}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 10, "fallback": "open"}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 10, "max_pause": 0}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 10, "max_flight": "60"}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 10, "max_flight": float("inf")}),
        (("redis://127.0.0.1:1/0",), {"per_minute": 10, "socket_timeout": float("nan")}),
        (("http://example.com",), {"per_minute": 10}),
        ((), {"per_minute": 10, "client_factory": lambda: None, "socket_timeout": 1, "db": 1}),
    ],
)
def test_bad_configuration_is_a_configuration_error(
    args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        RedisRateLimiter(*args, **options)


def test_a_client_refuses_something_that_is_not_a_limiter(fake: FakeAPIMW) -> None:
    with pytest.raises(ConfigurationError, match="rate_limiter"):
        Client(fake.credentials, base_url=fake.base_url, rate_limiter=object())  # type: ignore[arg-type]


def test_keys_of_one_api_key_share_a_hash_tag_and_a_cluster_slot() -> None:
    limiter = RedisRateLimiter.from_url("redis://127.0.0.1:1/0", per_minute=10, prefix="app")
    store = RedisTokenStore.from_url("redis://127.0.0.1:1/0", prefix="app")
    keys = [*limiter.keys(KEY), store.token_key(KEY), store.lease_key(KEY), store.channel(KEY)]
    assert keys == [
        f"app:{{{KEY}}}:rl:flight",
        f"app:{{{KEY}}}:rl:done",
        f"app:{{{KEY}}}:rl:pause",
        f"app:{{{KEY}}}:token",
        f"app:{{{KEY}}}:lease",
        f"app:{{{KEY}}}:updated",
    ]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    for bad in ("ak_live_123", "a{b}", "a b", ""):
        with pytest.raises(ValueError, match="rate-limiter key"):
            limiter.keys(bad)


# --- the window ---------------------------------------------------------------------------


async def test_requests_in_flight_hold_their_slots_for_a_whole_window(limiters: Any) -> None:
    limiter = limiters(limits=[(3, 10)])
    slots = [await limiter.try_acquire(KEY) for _ in range(3)]
    assert all(slot is not None and wait == 0 for slot, wait in slots)
    # Every slot is in flight: none can free up before one full window from now.
    assert await limiter.try_acquire(KEY) == (None, 10.0)
    await limiter.release(KEY, slots[0][0])
    # Released: it frees one window after its release, i.e. sooner than one from now.
    slot, wait = await limiter.try_acquire(KEY)
    assert slot is None
    assert 0 < wait < 10.0


async def test_a_released_slot_frees_one_window_after_its_release(
    limiters: Any, redis_target: RedisTarget
) -> None:
    limiter = limiters(limits=[(2, 10)])
    raw = redis_target.client()
    try:
        _, done, _ = limiter.keys(KEY)
        now = await redis_now(raw)
        await raw.zadd(done, {"old": now - 11 * US, "recent": now - 5 * US})
        slot, _ = await limiter.try_acquire(KEY)  # "old" is out of the window
        assert slot is not None
        slot2, wait = await limiter.try_acquire(KEY)
        assert slot2 is None
        assert 0 < wait <= 5.0
        assert await raw.zscore(done, "old") is None  # forgotten
    finally:
        await raw.aclose()


async def test_every_limit_applies(limiters: Any, redis_target: RedisTarget) -> None:
    limiter = limiters(limits=[(2, 1), (3, 60)])
    raw = redis_target.client()
    try:
        _, done, _ = limiter.keys(KEY)
        now = await redis_now(raw)
        await raw.zadd(done, {f"s{i}": now - 5 * US for i in range(3)})
        slot, wait = await limiter.try_acquire(KEY)
        # The per-second window is empty, the per-minute one full until 55 s from now.
        assert slot is None
        assert 50.0 < wait <= 55.0
    finally:
        await raw.aclose()


async def test_a_slot_its_holder_never_released_counts_until_max_flight(
    limiters: Any, redis_target: RedisTarget
) -> None:
    limiter = limiters(limits=[(1, 10)], max_flight=60)
    raw = redis_target.client()
    try:
        flight, done, _ = limiter.keys(KEY)
        now = await redis_now(raw)
        await raw.zadd(flight, {"dying": now - 55 * US})
        assert await limiter.try_acquire(KEY) == (None, 10.0)  # may still be on the wire
        await raw.zadd(flight, {"dying": now - 65 * US})
        slot, wait = await limiter.try_acquire(KEY)  # counts as released at -5 s
        assert slot is None
        assert 0 < wait <= 5.0
        assert await raw.zscore(flight, "dying") is None
        assert await raw.zscore(done, "dying") == now - 5 * US
        await raw.zadd(flight, {"dead": now - 100 * US})
        await raw.delete(done)
        slot, _ = await limiter.try_acquire(KEY)  # released at -40 s: out of the window
        assert slot is not None
        assert await raw.zscore(flight, "dead") is None
    finally:
        await raw.aclose()


# --- the shared cool-down -----------------------------------------------------------------


async def test_a_pause_holds_every_process_back_and_is_never_shortened(limiters: Any) -> None:
    first = limiters(limits=[(100, 2)], max_pause=120)
    second = limiters(limits=[(100, 2)])
    await first.pause(KEY, 30)
    assert first.stats.last_pause is not None
    set_at, until, _ = first.stats.last_pause
    assert until - set_at == pytest.approx(30)
    slot, wait = await second.try_acquire(KEY)
    assert slot is None
    assert 25.0 < wait <= 30.0
    await second.pause(KEY, 5)  # a shorter pause never shortens the running one
    assert second.stats.last_pause is not None
    assert second.stats.last_pause[1] == pytest.approx(until)
    await first.pause(KEY, 10_000)  # capped at max_pause
    assert first.stats.last_pause[1] - first.stats.last_pause[0] == pytest.approx(120)
    await second.pause("fedcba9876543210", None)  # no advice: the shortest window
    assert second.stats.last_pause[1] - second.stats.last_pause[0] == pytest.approx(2)
    daily = limiters(per_day=1000, per_hour=100)
    await daily.pause("fedcba9876543210", None)  # ... but never more than a minute
    assert daily.stats.last_pause is not None
    assert daily.stats.last_pause[1] - daily.stats.last_pause[0] == pytest.approx(60)


async def test_acquire_waits_out_a_pause_then_goes(limiters: Any) -> None:
    limiter = limiters(limits=[(100, 60)])
    await limiter.pause(KEY, 0.2)
    slot = await limiter.acquire(KEY)
    assert not slot.startswith("local:")
    assert limiter.stats.waits == 1
    assert limiter.stats.acquired == 1


async def test_callers_of_one_process_queue_in_arrival_order(limiters: Any) -> None:
    limiter = limiters(limits=[(3, 0.3)])
    calls = 0
    ask = limiter.try_acquire

    async def counted(key: str) -> tuple[str | None, float]:
        nonlocal calls
        calls += 1
        return await ask(key)

    limiter.try_acquire = counted
    order: list[int] = []

    async def caller(index: int) -> None:
        slot = await limiter.acquire(KEY)
        order.append(index)
        await limiter.release(KEY, slot)

    tasks = []
    for index in range(9):
        tasks.append(asyncio.ensure_future(caller(index)))
        await asyncio.sleep(0)  # each reaches the queue before the next starts
    await asyncio.gather(*tasks)
    assert order == list(range(9))
    # Only the head of the queue asks Redis: one call per slot plus one per full window
    # (a handful), where every waiting task asking at every turn would make 20 or more.
    assert calls < 9 + 6
    assert limiter.stats.acquired == 9


# --- clients, loops, processes ------------------------------------------------------------


async def test_a_user_made_client_is_bound_to_its_event_loop(redis_target: RedisTarget) -> None:
    client = redis_target.client()
    limiter = RedisRateLimiter(client=client, per_minute=10, prefix=redis_target.prefix)
    store = RedisTokenStore(client=client, prefix=redis_target.prefix)
    try:
        await limiter.ping()
        await store.ping()
        errors: list[BaseException] = []

        def other_loop() -> None:
            async def use() -> None:
                for call in (limiter.try_acquire(KEY), store.load(KEY)):
                    try:
                        await call
                    except ConfigurationError as exc:
                        errors.append(exc)

            asyncio.run(use())

        thread = threading.Thread(target=other_loop)
        thread.start()
        thread.join(30)
        assert len(errors) == 2
        assert all("client_factory" in str(exc) for exc in errors)
        await limiter.aclose()
        await store.aclose()
        assert await client.ping()  # the user's client is never closed for them
    finally:
        await client.aclose()


async def test_a_client_factory_serves_every_event_loop(redis_target: RedisTarget) -> None:
    limiter = RedisRateLimiter(
        client_factory=redis_target.client, limits=[(2, 60)], prefix=redis_target.prefix
    )
    slots: list[str | None] = []

    def other_loop() -> None:
        slots.append(asyncio.run(limiter.try_acquire(KEY))[0])

    for _ in range(2):
        thread = threading.Thread(target=other_loop)
        thread.start()
        thread.join(30)
    slot, wait = await limiter.try_acquire(KEY)
    assert all(s is not None and not s.startswith("local:") for s in slots)
    assert slot is None
    assert wait == 60.0
    await limiter.aclose()


@pytest.mark.parametrize("part", ["limiter", "store"])
async def test_closing_leaves_the_pool_of_a_client_factory_to_its_owner(
    redis_url: str, redis_prefix: str, part: str
) -> None:
    """A factory over the user's own ConnectionPool: closing the limiter (or the token store)
    closes the client it got, never the pool, which the user's other code still uses."""
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(redis_url)
    theirs = redis.asyncio.Redis(connection_pool=pool, single_connection_client=True)
    try:
        their_id = await theirs.client_id()  # the user's connection, taken from the pool

        def factory() -> Any:
            return redis.asyncio.Redis(connection_pool=pool)

        closable: RedisRateLimiter | RedisTokenStore
        if part == "limiter":
            closable = RedisRateLimiter(client_factory=factory, per_minute=10, prefix=redis_prefix)
            assert (await closable.try_acquire(KEY))[0] is not None
        else:
            closable = RedisTokenStore(client_factory=factory, prefix=redis_prefix)
            assert await closable.acquire_lease(KEY) is not None
        await closable.aclose()
        # The user's connection was neither cut nor replaced by a new one...
        assert await theirs.client_id() == their_id
        # ...and the pool goes on serving the user's other clients.
        assert await redis.asyncio.Redis(connection_pool=pool).ping()
    finally:
        await theirs.aclose()
        await pool.disconnect()


def _child_takes_a_slot(limiter: RedisRateLimiter, conn: Any) -> None:
    async def take() -> str:
        slot, _ = await limiter.try_acquire(KEY)
        return "none" if slot is None else slot

    conn.send(asyncio.run(take()))
    conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_connections(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisRateLimiter.from_url(redis_url, limits=[(3, 60)], prefix=redis_prefix)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(limiter.try_acquire(KEY))[0] is not None
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe(duplex=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            child = ctx.Process(target=_child_takes_a_slot, args=(limiter, child_end))
            child.start()
        assert parent_end.poll(30)
        slot = parent_end.recv()
        child.join(30)
        assert child.exitcode == 0
        assert slot != "none"
        assert not slot.startswith("local:")  # through Redis, on the child's own connection
        # The parent's connection still works, and the child's slot counted in the window.
        assert loop.run_until_complete(limiter.try_acquire(KEY))[0] is not None
        assert loop.run_until_complete(limiter.try_acquire(KEY)) == (None, 60.0)
        loop.run_until_complete(limiter.aclose())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_loop_per_call_leaves_no_connection_behind(redis_url: str, redis_prefix: str) -> None:
    from .test_fork_and_loops import _open_fds

    limiter = RedisRateLimiter.from_url(redis_url, per_minute=10_000, prefix=redis_prefix)

    def call() -> None:
        loop = asyncio.new_event_loop()
        try:
            slot = loop.run_until_complete(limiter.acquire(KEY))
            loop.run_until_complete(limiter.release(KEY, slot))
        finally:
            loop.close()  # never shut down: its connection is released with the next loop

    call()
    fds = _open_fds()
    for _ in range(30):
        call()
    assert _open_fds() - fds <= 2
    asyncio.run(limiter.aclose())


# --- Redis unavailable --------------------------------------------------------------------


async def test_redis_down_paces_this_process_alone_then_redis_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, "apimw_async")
    # Try Redis again on every call (a few seconds in production): still one warning.
    monkeypatch.setattr(_redis_limiter, "STORE_RETRY_INTERVAL", 0.0)
    async with RedisRateLimiter.from_url(redis_server.url, limits=[(2, 60)]) as limiter:
        first = await limiter.acquire(KEY)
        await limiter.release(KEY, first)
        redis_server.stop()
        local = [await limiter.try_acquire(KEY) for _ in range(3)]
        assert [slot is not None and slot.startswith("local:") for slot, _ in local[:2]] == [
            True,
            True,
        ]
        slot, wait = local[2]
        assert slot is None
        assert 50.0 < wait <= 60.0
        await limiter.release(KEY, local[0][0])  # a local slot: nothing to do
        await limiter.pause(KEY, 30)  # kept locally
        assert (await limiter.try_acquire(KEY))[1] > 25.0
        assert limiter.stats.outages == 1
        outage = [r for r in caplog.records if "pacing this process alone" in r.getMessage()]
        assert len(outage) == 1
        assert outage[0].levelno == logging.WARNING
        redis_server.start()
        slot, wait = await limiter.try_acquire(KEY)
        # Redis is back (empty: nothing persisted) and paces the fleet again.
        assert slot is not None
        assert not slot.startswith("local:")
        assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_fallback_raise_surfaces_a_typed_error(redis_server: RedisServer) -> None:
    async with RedisRateLimiter.from_url(
        redis_server.url, per_minute=10, fallback="raise"
    ) as limiter:
        redis_server.stop()
        with pytest.raises(StoreUnavailableError, match="redis rate limiter: acquire failed"):
            await limiter.acquire(KEY)


async def test_a_client_keeps_sending_while_redis_is_down(
    fake: FakeAPIMW, redis_server: RedisServer
) -> None:
    async with (
        RedisRateLimiter.from_url(redis_server.url, per_minute=100) as limiter,
        Client(fake.credentials, base_url=fake.base_url, rate_limiter=limiter) as client,
    ):
        await client.whatsapp.send_text("+15550001111", "before")
        redis_server.stop()
        await client.whatsapp.send_text("+15550001111", "during")
        assert limiter.stats.outages == 1
    assert fake.stats.messages_sent == 2


# --- behind a Client ----------------------------------------------------------------------


async def test_each_request_takes_a_slot_with_its_token_and_releases_it(
    fake: FakeAPIMW, redis_target: RedisTarget, limiters: Any
) -> None:
    limiter = limiters(per_minute=1000)
    seen: list[bool] = []
    take = limiter.acquire

    async with Client(fake.credentials, base_url=fake.base_url, rate_limiter=limiter) as client:

        async def acquire(key: str) -> str:
            seen.append(client.tokens.token is not None)  # the token is in hand already
            assert key == client.tokens.store_key
            return await take(key)

        limiter.acquire = acquire
        await asyncio.gather(
            *(client.whatsapp.send_text("+15550001111", f"hi {i}") for i in range(5))
        )
        await client.auth.me()
    assert seen == [True] * 6
    raw = redis_target.client()
    try:
        flight, done, _ = limiter.keys(client.tokens.store_key)
        assert await raw.zcard(flight) == 0
        assert await raw.zcard(done) == 6
    finally:
        await raw.aclose()


async def test_a_429_pauses_every_process_until_the_advised_time(
    fake: FakeAPIMW, limiters: Any
) -> None:
    limiter, other = limiters(per_minute=1000), limiters(per_minute=1000)
    fake.faults.add("send", status=429, retry_after=30)
    async with Client(
        fake.credentials,
        base_url=fake.base_url,
        rate_limiter=limiter,
        retry_policy=RetryPolicy(max_attempts=1),
    ) as client:
        with pytest.raises(RateLimitError):
            await client.whatsapp.send_text("+15550001111", "hi")
        key = client.tokens.store_key
    assert limiter.stats.pauses == 1
    assert limiter.stats.last_pause is not None
    set_at, until, _ = limiter.stats.last_pause
    assert until - set_at == pytest.approx(30)
    slot, wait = await other.try_acquire(key)
    assert slot is None
    assert 25.0 < wait <= 30.0


@pytest.mark.apimw_fake(plan="free", enforce_rate_limit=True)
async def test_an_exhausted_remaining_pauses_until_the_reset(
    fake: FakeAPIMW, limiters: Any
) -> None:
    limiter = limiters(per_minute=1000)
    async with Client(fake.credentials, base_url=fake.base_url, rate_limiter=limiter) as client:
        for _ in range(10):  # the free plan: 10 a minute
            await client.auth.me()
        info = client.rate_limit
    assert info is not None
    assert info.remaining == 0
    assert info.reset is not None
    assert limiter.stats.pauses == 1
    assert limiter.stats.last_pause is not None
    _, until, _ = limiter.stats.last_pause
    assert until == pytest.approx(info.reset, abs=2.0)


async def test_a_cancelled_request_releases_its_slot(
    fake: FakeAPIMW, redis_target: RedisTarget, limiters: Any
) -> None:
    limiter = limiters(per_minute=1000)
    fake.faults.add("send", "delay", delay=30)
    raw = redis_target.client()
    try:
        async with Client(fake.credentials, base_url=fake.base_url, rate_limiter=limiter) as client:
            await client.auth.me()  # a token first
            flight, done, _ = limiter.keys(client.tokens.store_key)
            taken = asyncio.Event()
            take = limiter.acquire

            async def acquire(key: str) -> str:
                slot = await take(key)
                taken.set()
                return str(slot)

            limiter.acquire = acquire
            task = asyncio.create_task(client.whatsapp.send_text("+15550001111", "slow"))
            await taken.wait()
            assert await raw.zcard(flight) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await raw.zcard(flight) == 0
            assert await raw.zcard(done) == 2
    finally:
        await raw.aclose()
