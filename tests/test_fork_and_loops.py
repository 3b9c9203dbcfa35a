"""A Client crossing process and event-loop boundaries: forked children, loops made and closed
without ``asyncio.run`` (Celery tasks, sync wrappers), state per loop in one place.

Fork tests use real ``fork`` children (``multiprocessing`` fork context) against the fake server
with reuse detection on; they count refresh-token reuse and fallbacks, never time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import time
import traceback
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from apimw_async import Client, FakeClock
from apimw_async._config import STORE_CHECK_INTERVAL
from apimw_async._loops import PerLoop
from apimw_async.stores import MemoryTokenStore
from apimw_async.testing import FakeAPIMW

from .server_thread import ServerThread

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

CHILDREN = 4


def _child(client: Client, result_path: str) -> None:
    """A forked child: keep using the parent's client, report what happened."""
    result: dict[str, Any] = {"ok": False}
    try:

        async def run() -> None:
            me = await client.auth.me()  # the server expired the inherited token: 401, then...
            result["user"] = me.user.id
            result["stats"] = client.tokens.stats.as_dict()

        asyncio.run(run())
        result["ok"] = True
    except BaseException:
        result["crash"] = traceback.format_exc()[-4000:]
        raise
    finally:
        Path(result_path).write_text(json.dumps(result))


async def fork_children(tmp_path: Path, client: Client, n: int = CHILDREN) -> list[dict[str, Any]]:
    """Fork ``n`` children using ``client``; wait for them without blocking this loop (it
    serves the fake server)."""
    ctx = multiprocessing.get_context("fork")
    processes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        for index in range(n):
            path = tmp_path / f"child-{index}.json"
            process = ctx.Process(target=_child, args=(client, str(path)), name=path.stem)
            process.start()
            processes.append(process)
    hang_guard = time.monotonic() + 60
    while any(p.exitcode is None for p in processes):
        assert time.monotonic() < hang_guard, "forked children hang"
        await asyncio.sleep(0.02)
    results = []
    for process in processes:
        path = tmp_path / f"{process.name}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        assert process.exitcode == 0, result.get("crash", f"exit code {process.exitcode}")
        results.append(result)
    return results


def assert_no_reuse(fake: FakeAPIMW) -> None:
    stats = fake.stats
    assert stats.refresh_reuse == 0, stats
    assert stats.invalid_refresh == 0, stats
    assert stats.families_revoked == 0, stats


@needs_fork
@pytest.mark.apimw_fake(reuse_detection=True)
async def test_forked_children_never_send_the_parents_refresh_token(
    fake: FakeAPIMW, tmp_path: Path
) -> None:
    async with Client(fake.credentials, base_url=fake.base_url, timeout=30.0) as client:
        await client.auth.me()  # a token, a refresh token and pooled connections, pre-fork
        assert fake.stats.token_calls == 1
        fake.expire_access_tokens()  # everyone needs a new token now

        results = await fork_children(tmp_path, client)
        assert all(r["ok"] for r in results)
        # Each child used the credentials (it cannot know whether the parent spent the
        # refresh token it inherited), none sent that refresh token.
        assert fake.stats.refresh_calls == 0
        assert fake.stats.token_calls == 1 + CHILDREN
        assert_no_reuse(fake)

        # The parent's own refresh token is intact, and so are its pooled connections: its
        # next refresh goes through on the first try.
        await client.auth.me()
        stats = client.tokens.stats
        assert fake.stats.refresh_successes == 1
        assert stats.refresh_calls == 1
        assert stats.fallbacks == 0
        assert stats.failures == 0
        assert_no_reuse(fake)


@needs_fork
@pytest.mark.apimw_fake(reuse_detection=True)
async def test_forked_children_leave_the_parents_pooled_connections_alone(
    fake: FakeAPIMW, tmp_path: Path
) -> None:
    async with Client(fake.credentials, base_url=fake.base_url, timeout=30.0) as client:
        await client.auth.me()  # pooled keep-alive connections for token and API calls
        results = await fork_children(tmp_path, client)  # valid token: no token calls there
        assert all(r["ok"] for r in results)
        assert fake.stats.token_calls == 1
        assert fake.stats.refresh_calls == 0

        # A child that closed (or let the collector close) the parent's connectors would have
        # unregistered their sockets from the epoll both processes share: this refresh, on
        # the parent's pooled connection, would then hang until its timeout and fall back.
        fake.expire_access_tokens()
        await client.auth.me()
        stats = client.tokens.stats
        assert (stats.refresh_calls, stats.failures, stats.fallbacks) == (1, 0, 0)
        assert fake.stats.refresh_successes == 1
        assert_no_reuse(fake)


@needs_fork
@pytest.mark.apimw_fake(reuse_detection=True)
async def test_forked_children_with_a_store_go_through_the_store(
    fake: FakeAPIMW, tmp_path: Path, redis_url: str
) -> None:
    pytest.importorskip("redis")
    from apimw_async.stores.redis import RedisTokenStore

    store = RedisTokenStore.from_url(redis_url, prefix=f"apimw-fork-{uuid.uuid4().hex[:10]}")
    async with (
        store,
        Client(fake.credentials, base_url=fake.base_url, store=store, timeout=30.0) as client,
    ):
        await client.auth.me()
        fake.expire_access_tokens()

        results = await fork_children(tmp_path, client)
        assert all(r["ok"] for r in results)
        # One child refreshed under the lease with the pair from the store; the others took
        # its new pair from the store.
        assert fake.stats.refresh_successes == 1
        assert fake.stats.token_calls == 1
        assert_no_reuse(fake)

        await client.auth.me()  # the parent adopts the children's pair
        assert client.tokens.stats.adopted == 1
        assert client.tokens.stats.fallbacks == 0
        assert client.tokens.stats.failures == 0
        assert_no_reuse(fake)


@needs_fork
@pytest.mark.apimw_fake(reuse_detection=True)
async def test_forked_children_with_a_memory_store_never_send_the_parents_refresh_token(
    fake: FakeAPIMW, tmp_path: Path
) -> None:
    store = MemoryTokenStore()  # each child gets a copy: it holds the parent's refresh token
    async with Client(
        fake.credentials, base_url=fake.base_url, store=store, timeout=30.0
    ) as client:
        await client.auth.me()
        fake.expire_access_tokens()
        results = await fork_children(tmp_path, client)
        assert all(r["ok"] for r in results)
        assert fake.stats.refresh_calls == 0  # the children used the credentials
        assert_no_reuse(fake)
        await client.auth.me()
        assert client.tokens.stats.refresh_calls == 1
        assert client.tokens.stats.fallbacks == 0
        assert_no_reuse(fake)


# --- event loops made and closed by hand ------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_loops() -> int:
    gc.collect()
    return sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_loop_per_call_leaks_neither_sockets_nor_loops() -> None:
    with ServerThread() as fake:
        client = Client(fake.credentials, base_url=fake.base_url)

        def call() -> None:
            # What a Celery task or a sync wrapper does: no asyncio.run, so the loop's async
            # generators are never shut down before it is closed.
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(client.auth.me())
            finally:
                loop.close()

        call()
        fds, loops = _open_fds(), _live_loops()
        for _ in range(100):
            call()
        # At most the latest loop's sockets are still open (released when the next loop
        # registers); 100 loops' worth would be 100+ fds.
        assert _open_fds() - fds <= 4
        assert _live_loops() - loops <= 1
        assert fake.stats.token_calls == 1
        asyncio.run(client.aclose())
        assert client._sessions.loops == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_loop_per_call_with_a_redis_store_leaves_nothing_behind(redis_url: str) -> None:
    from apimw_async.stores.redis import RedisTokenStore

    clock = FakeClock()
    with ServerThread() as fake:
        store = RedisTokenStore.from_url(redis_url, prefix=f"apimw-loops-{uuid.uuid4().hex[:10]}")
        client = Client(fake.credentials, base_url=fake.base_url, store=store, clock=clock)

        def call() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(client.auth.me())
            finally:
                loop.close()  # with the store check (and its Redis command) maybe in flight
            clock.advance(STORE_CHECK_INTERVAL)  # every call starts a store check

        async def close() -> None:
            await client.aclose()
            await store.aclose()

        try:
            call()
            fds, loops = _open_fds(), _live_loops()
            for _ in range(30):
                call()
            # Redis connections (and redis-py's own tasks), the store check's task, the
            # sessions: all released with their loop (pytest turns any "unclosed" warning or
            # ignored exception into a failure).
            assert _open_fds() - fds <= 4
            assert _live_loops() - loops <= 1
            assert fake.stats.token_calls == 1
        finally:
            asyncio.run(close())


def test_per_loop_values_close_at_loop_shutdown_and_are_abandoned_for_closed_loops() -> None:
    made: list[int] = []
    closed: list[int] = []
    abandoned: list[int] = []

    async def close(value: int) -> None:
        await asyncio.sleep(0)  # inside the loop: it can await
        closed.append(value)

    registry: PerLoop[int] = PerLoop(
        lambda: made.append(len(made)) or made[-1], close=close, abandon=abandoned.append
    )

    async def use() -> int:
        first = registry.get()
        assert registry.get() is first
        return first

    assert asyncio.run(use()) == 0
    assert closed == [0]
    assert len(registry) == 0

    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(use()) == 1
    loop.close()  # no shutdown: nothing closed it
    assert closed == [0]
    assert len(registry) == 1

    assert asyncio.run(use()) == 2  # the next loop prunes the closed one
    assert abandoned == [1]
    assert closed == [0, 2]
    assert len(registry) == 0


@needs_fork
def test_a_forked_child_never_closes_or_uses_the_parents_per_loop_values(tmp_path: Path) -> None:
    closed: list[str] = []
    forks: list[int] = []

    async def close(value: str) -> None:
        closed.append(value)

    registry: PerLoop[str] = PerLoop(
        lambda: f"made in {os.getpid()}",
        close=close,
        abandon=closed.append,
        after_fork=lambda: forks.append(os.getpid()),
    )
    loop = asyncio.new_event_loop()
    parent_value = loop.run_until_complete(_get(registry))
    out = tmp_path / "child.json"

    def child() -> None:
        async def run() -> str:
            return registry.get()

        value = asyncio.run(run())
        out.write_text(json.dumps({"value": value, "closed": closed, "forks": forks}))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
    process.join(60)
    assert process.exitcode == 0
    seen = json.loads(out.read_text())
    assert seen["value"] == f"made in {process.pid}"  # its own, not the parent's
    # The parent's value was neither closed nor abandoned in the child; only its own was
    # closed, at its asyncio.run's shutdown.
    assert seen["closed"] == [seen["value"]]
    assert seen["forks"] == [process.pid]
    assert loop.run_until_complete(_get(registry)) == parent_value
    assert closed == []
    assert forks == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    assert closed == [parent_value]


async def _get(registry: PerLoop[str]) -> str:
    return registry.get()
