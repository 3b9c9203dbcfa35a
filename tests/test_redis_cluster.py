"""Every Redis part (token store, rate limiter, webhook queue and de-duplication) on a client
the user made, against a single server and a real 3-node Redis Cluster (``redis_target``):
one API key's (or receiver's) keys in one slot, scripts and pub/sub wake-ups working,
user-made clients bound to their loop and process, Sentinel-made clients."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import warnings
from typing import Any

import pytest

pytest.importorskip("redis")

from apimw_async import ConfigurationError, TokenManager
from apimw_async.stores import StoredToken
from apimw_async.stores import redis as redis_store
from apimw_async.stores.redis import RedisRateLimiter, RedisTokenStore
from apimw_async.testing import FakeAPIMW

from .conftest_redis import RedisTarget
from .redis_server import RedisSentinel, redis_binary

KEY = "fedcba9876543210fedcba9876543210"


def pair(version: int) -> StoredToken:
    now = time.time()
    return StoredToken(
        access_token=f"eyJ.access.{version}",
        token_type="Bearer",
        expires_in=3600.0,
        refresh_token=f"rt_refresh_{version}",
        issued_at=now,
        refresh_issued_at=now,
        version=version,
    )


async def _pubsub_clients(target: RedisTarget) -> int:
    client = target.client()
    try:
        if target.cluster:
            answers = await client.client_list(_type="pubsub", target_nodes="all")
            if isinstance(answers, dict):
                return sum(len(a) for a in answers.values())
            return len(answers)
        return len(await client.client_list(_type="pubsub"))
    finally:
        await client.aclose()


async def test_token_store_on_a_user_made_client(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a pub/sub message can wake the waiters in time: the safety poll is pushed out.
    monkeypatch.setattr(redis_store, "SAFETY_POLL_INTERVAL", 3600.0)
    mine, theirs = redis_target.client(), redis_target.client()
    store = RedisTokenStore(client=mine, prefix=redis_target.prefix)
    writer = RedisTokenStore(client=theirs, prefix=redis_target.prefix)
    try:
        assert await writer.save(KEY, pair(1), expected_version=0)
        assert not await writer.save(KEY, pair(1), expected_version=0)  # compare-and-set
        loaded = await store.load(KEY)
        assert loaded is not None
        assert loaded.version == 1
        owner = await writer.acquire_lease(KEY, 30.0)
        assert owner is not None
        assert await store.acquire_lease(KEY, 30.0) is None
        before = await _pubsub_clients(redis_target)
        waiters = [asyncio.ensure_future(store.wait_for_update(KEY, 1, 60.0)) for _ in range(20)]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiters)
        assert await _pubsub_clients(redis_target) - before == 1  # one subscription per loop
        assert await writer.save(KEY, pair(2), expected_version=1)
        await asyncio.wait_for(asyncio.gather(*waiters), 30.0)
        assert await writer.renew_lease(KEY, owner, 30.0)
        await writer.release_lease(KEY, owner)
        assert await store.acquire_lease(KEY, 1.0) is not None
    finally:
        await store.aclose()
        await writer.aclose()
        for client in (mine, theirs):
            assert await client.ping()  # never closed by the store
            await client.aclose()


async def test_a_fleet_shares_one_token_and_one_window_through_the_target(
    fake: FakeAPIMW, redis_target: RedisTarget
) -> None:
    """Two "processes" (own stores, limiters and clients, made by a factory per loop)."""
    managers, stores, limiters = [], [], []
    for _ in range(2):
        store = RedisTokenStore(client_factory=redis_target.client, prefix=redis_target.prefix)
        stores.append(store)
        managers.append(TokenManager(fake.credentials, base_url=fake.base_url, store=store))
        limiters.append(
            RedisRateLimiter(
                client_factory=redis_target.client, limits=[(3, 60)], prefix=redis_target.prefix
            )
        )
    try:
        first = await managers[0].get_token()
        second = await managers[1].get_token()
        assert first.access_token == second.access_token
        assert fake.stats.token_calls == 1
        key = managers[0].store_key
        assert key == managers[1].store_key
        taken = [await limiters[i % 2].try_acquire(key) for i in range(4)]
        assert [slot is not None for slot, _ in taken] == [True, True, True, False]
    finally:
        for manager in managers:
            await manager.aclose()
        for closable in (*stores, *limiters):
            await closable.aclose()


async def test_sentinel_made_clients(fake: FakeAPIMW) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not on PATH (needed for a private Sentinel)")
    from redis.asyncio.sentinel import Sentinel

    with RedisSentinel() as deployment:
        sentinel = Sentinel([("127.0.0.1", deployment.port)], socket_timeout=2)

        def master() -> Any:
            return sentinel.master_for(RedisSentinel.MASTER, socket_timeout=2)

        store = RedisTokenStore(client_factory=master)
        mine = master()
        limiter = RedisRateLimiter(client=mine, limits=[(2, 60)])
        try:
            async with TokenManager(
                fake.credentials, base_url=fake.base_url, store=store
            ) as manager:
                await manager.get_token()
                assert await store.load(manager.store_key) is not None
                taken = [await limiter.try_acquire(manager.store_key) for _ in range(3)]
                assert [slot is not None for slot, _ in taken] == [True, True, False]
            assert limiter.stats.outages == 0
        finally:
            await store.aclose()
            await limiter.aclose()
            await mine.aclose()
            for client in sentinel.sentinels:
                await client.aclose()


def _child_uses(store: RedisTokenStore, limiter: RedisRateLimiter, conn: Any) -> None:
    async def use() -> str:
        try:
            await store.save(KEY, pair(1), expected_version=0)
            await limiter.try_acquire(KEY)
        except ConfigurationError as exc:
            return f"ConfigurationError: {exc}"
        return "ok"

    conn.send(asyncio.run(use()))
    conn.close()


def _fork_child(store: RedisTokenStore, limiter: RedisRateLimiter) -> str:
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        child = ctx.Process(target=_child_uses, args=(store, limiter, child_end))
        child.start()
    try:
        assert parent_end.poll(30)
        return str(parent_end.recv())
    finally:
        child.join(30)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_user_made_client_is_bound_to_the_process_that_first_used_it(
    redis_target: RedisTarget,
) -> None:
    client = redis_target.client()
    store = RedisTokenStore(client=client, prefix=redis_target.prefix)
    limiter = RedisRateLimiter(client=client, per_minute=10, prefix=redis_target.prefix)
    # Made before the fork and never used here (an app preloaded by its server): the child
    # may adopt it.
    assert _fork_child(store, limiter) == "ok"

    async def parent_uses() -> None:
        loaded = await store.load(KEY)
        assert loaded is not None  # the child's save
        await limiter.ping()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(parent_uses())
        # Used here: its connections are this process's; a child must make its own.
        answer = _fork_child(store, limiter)
        assert answer.startswith("ConfigurationError:")
        assert "client_factory" in answer
        loop.run_until_complete(parent_uses())  # the parent's connections still work
        loop.run_until_complete(client.aclose())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# --- the webhook queue and fleet-wide dedup (apimw_async.webhooks.redis) -------------------


async def _wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait for the receiver's background consumers (polls state; bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_webhook_queue_on_a_user_made_client(redis_target: RedisTarget) -> None:
    from redis.crc import key_slot

    from apimw_async.webhooks import WebhookEvent, WebhookReceiver
    from apimw_async.webhooks.redis import RedisWebhookQueue

    from .test_webhooks import SECRET, event_body, signed

    client = redis_target.client()
    queue = RedisWebhookQueue(
        client,
        prefix=redis_target.prefix,
        claim_idle=0.3,
        retry_backoff=0.01,
        max_backoff=0.05,
        block=0.2,
        max_attempts=2,
    )
    keys = [queue.stream_key, queue.dead_key, queue.seen_key("message.delivered", "evt_1")]
    assert len({key_slot(key.encode()) for key in keys}) == 1  # one slot: scripts work
    handled: list[str | None] = []
    failing = {"evt_bad"}

    async def on_event(event: WebhookEvent) -> None:
        if event.id in failing:
            raise RuntimeError("handler failed")
        handled.append(event.id)

    receiver = WebhookReceiver(SECRET, on_event, queue=queue)
    try:
        bodies = [event_body(f"evt_{i}") for i in range(10)]
        bodies += [event_body("evt_3"), event_body("evt_bad")]  # a redelivery, a bad one
        for body in bodies:
            assert (await receiver.receive(body, signed(body))).status == 200
        assert queue.stats.stored == 11
        assert queue.stats.duplicates == 1
        await receiver.start()
        await _wait_until(lambda: len(handled) == 10 and queue.stats.dead_lettered == 1)
        dead = await queue.dead_letters()
        assert [letter.event.id for letter in dead] == ["evt_bad"]
        failing.clear()
        assert await queue.replay() == 1
        await _wait_until(lambda: len(handled) == 11)
        assert sorted(handled, key=str) == sorted([f"evt_{i}" for i in range(10)] + ["evt_bad"])
    finally:
        await receiver.aclose()
        assert await client.ping()  # the user's client: never closed for them
        await client.aclose()


async def test_webhook_dedup_across_processes_on_user_made_clients(
    redis_target: RedisTarget,
) -> None:
    from apimw_async.webhooks import WebhookEvent, WebhookReceiver
    from apimw_async.webhooks.redis import RedisWebhookDedup

    from .test_webhooks import SECRET, event_body, signed

    handled: list[str | None] = []

    async def on_event(event: WebhookEvent) -> None:
        handled.append(event.id)

    clients = [redis_target.client() for _ in range(3)]
    receivers = [
        WebhookReceiver(
            SECRET, on_event, dedup=RedisWebhookDedup(client, prefix=redis_target.prefix)
        )
        for client in clients
    ]
    try:
        body = event_body("evt_once")
        for receiver in receivers:  # the same delivery reaches three "processes"
            assert (await receiver.receive(body, signed(body))).status == 200
        await _wait_until(lambda: len(handled) >= 1)
        for receiver in receivers:
            await receiver.aclose()
        assert handled == ["evt_once"]
    finally:
        for client in clients:
            await client.aclose()
