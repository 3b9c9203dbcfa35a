"""Fair admission end to end: a tiny pool, a fake server that holds requests, order asserted.

The fake server records the order in which requests reach it (``fake.arrivals``) and holds
them until released; with a one-connection pool, that order is the admission order. Nothing
here measures time: the admission timeout runs on the FakeClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from apimw_async import (
    BearerAuthMiddleware,
    Client,
    ConfigurationError,
    FakeClock,
    PoolTimeoutError,
    TokenManager,
)
from apimw_async._admission import gate_for
from apimw_async.testing import FakeAPIMW

from .conftest import drive


def seqs(fake: FakeAPIMW) -> list[str]:
    return [query.removeprefix("seq=") for _, query in fake.arrivals]


async def queued(count: Callable[[], int], n: int) -> None:
    """Let tasks run until ``count()`` reaches ``n`` (they are waiting for admission)."""
    for _ in range(200):
        if count() >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {count()} of {n} queued")


async def newcomer_does_not_overtake(
    fake: FakeAPIMW,
    send: Callable[[str], Awaitable[Any]],
    waiting: Callable[[], int],
) -> None:
    """Worker A's second request (sent as soon as its first one ends) goes behind B and C."""
    fake.hold("me")

    async def worker_a() -> None:
        await send("a1")
        await send("a2")

    a = asyncio.create_task(worker_a())
    await fake.wait_arrivals(1)
    b = asyncio.create_task(send("b"))
    await queued(waiting, 1)
    c = asyncio.create_task(send("c"))
    await queued(waiting, 2)
    fake.release("me")
    await asyncio.gather(a, b, c)
    assert seqs(fake) == ["a1", "b", "c", "a2"]


async def test_client_admits_requests_in_arrival_order(fake: FakeAPIMW) -> None:
    async with Client(fake.credentials, base_url=fake.base_url, connector_limit=1) as client:
        await client.auth.me()  # the token first: its call has its own session
        fake.hold("me")
        tasks = []
        for i in range(8):
            tasks.append(
                asyncio.create_task(client.request("GET", "/auth/me", params={"seq": str(i)}))
            )
            await asyncio.sleep(0)
        await fake.wait_arrivals(1)
        gate = client.admission
        assert gate is not None
        await queued(lambda: gate.waiting, 7)
        fake.release("me")
        await asyncio.gather(*tasks)
        assert seqs(fake) == [str(i) for i in range(8)]
        assert gate.in_use == 0


async def test_client_newcomer_goes_behind_the_queue(fake: FakeAPIMW) -> None:
    async with Client(fake.credentials, base_url=fake.base_url, connector_limit=1) as client:
        await client.auth.me()
        gate = client.admission
        assert gate is not None

        async def send(seq: str) -> None:
            await client.request("GET", "/auth/me", params={"seq": seq})

        await newcomer_does_not_overtake(fake, send, lambda: gate.waiting)


async def test_client_limit_follows_a_user_session_and_max_connections(fake: FakeAPIMW) -> None:
    connector = aiohttp.TCPConnector(limit=3)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        Client(fake.credentials, base_url=fake.base_url, session=session) as client,
    ):
        assert client.admission is not None
        assert client.admission.limit == 3
    async with Client(fake.credentials, base_url=fake.base_url, max_connections=5) as client:
        assert client.admission is not None
        assert client.admission.limit == 5
    async with Client(fake.credentials, base_url=fake.base_url, fair_admission=False) as client:
        assert client.admission is None
        await client.auth.me()
    for bad in ({"max_connections": 0}, {"admission_timeout": -1}, {"max_connections": 2.5}):
        with pytest.raises(ConfigurationError):
            Client(fake.credentials, base_url=fake.base_url, **bad)  # type: ignore[arg-type]


async def test_cancelled_queued_request_leaks_no_slot(fake: FakeAPIMW) -> None:
    async with Client(fake.credentials, base_url=fake.base_url, connector_limit=1) as client:
        await client.auth.me()
        gate = client.admission
        assert gate is not None
        fake.hold("me")
        first = asyncio.create_task(client.request("GET", "/auth/me", params={"seq": "0"}))
        await fake.wait_arrivals(1)
        doomed = asyncio.create_task(client.request("GET", "/auth/me", params={"seq": "x"}))
        last = asyncio.create_task(client.request("GET", "/auth/me", params={"seq": "1"}))
        await queued(lambda: gate.waiting, 2)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        assert gate.waiting == 1
        fake.release("me")
        await asyncio.gather(first, last)
        assert seqs(fake) == ["0", "1"]
        assert gate.in_use == 0
        assert gate.waiting == 0


async def test_admission_timeout_raises_pool_timeout_and_is_not_retried(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake = timed_fake
    client = Client(
        fake.credentials,
        base_url=fake.base_url,
        connector_limit=1,
        admission_timeout=5,
        clock=clock,
    )
    async with client:
        await client.auth.me()
        fake.hold("me")
        first = asyncio.create_task(client.request("GET", "/auth/me", params={"seq": "0"}))
        await fake.wait_arrivals(1)
        waiting = asyncio.create_task(client.request("GET", "/auth/me", params={"seq": "1"}))
        await clock.wait_for_sleepers(1)
        clock.advance(5)
        with pytest.raises(PoolTimeoutError, match="within 5s"):
            await waiting
        fake.release("me")
        await first
        assert seqs(fake) == ["0"]  # the timed-out request was never sent, nor retried
        await client.auth.me()


async def test_middleware_opt_in_admits_in_arrival_order(fake: FakeAPIMW) -> None:
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    middleware = BearerAuthMiddleware(tm, fair_admission=True)
    connector = aiohttp.TCPConnector(limit=1)
    async with tm, aiohttp.ClientSession(connector=connector, middlewares=(middleware,)) as s:

        async def send(seq: str) -> None:
            async with s.get(f"{fake.base_url}/auth/me", params={"seq": seq}) as resp:
                assert resp.status == 200
                await resp.read()

        await send("warm-up")
        fake.arrivals.clear()
        gate = gate_for(s, create=False)
        assert gate is not None
        assert gate.limit == 1
        await newcomer_does_not_overtake(fake, send, lambda: gate.waiting)
        assert gate.in_use == 0


async def test_middleware_slot_is_held_until_the_response_is_released(fake: FakeAPIMW) -> None:
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    middleware = BearerAuthMiddleware(tm, fair_admission=True, max_connections=1)
    async with tm, aiohttp.ClientSession(middlewares=(middleware,)) as s:
        gate = None
        async with s.get(f"{fake.base_url}/auth/me") as resp:
            gate = gate_for(s, create=False)
            assert gate is not None
            assert gate.limit == 1
            await resp.read()
        assert gate.in_use == 0
        # Not read, only released: the slot comes back too.
        resp = await s.get(f"{fake.base_url}/whatsapp/templates")
        resp.release()
        assert gate.in_use == 0
        # A failed request gives its slot back.
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get("http://127.0.0.1:9/v1/auth/me")
        assert gate.in_use == 0


def test_middleware_admission_options_need_the_opt_in(fake: FakeAPIMW) -> None:
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    with pytest.raises(ConfigurationError, match="fair_admission"):
        BearerAuthMiddleware(tm, max_connections=4)
    with pytest.raises(ConfigurationError):
        BearerAuthMiddleware(tm, fair_admission=True, admission_timeout=0)


async def test_middleware_admission_timeout(fake: FakeAPIMW) -> None:
    clock = FakeClock()
    tm = TokenManager(fake.credentials, base_url=fake.base_url, clock=clock)
    middleware = BearerAuthMiddleware(tm, fair_admission=True, admission_timeout=1)
    connector = aiohttp.TCPConnector(limit=1)
    async with tm, aiohttp.ClientSession(connector=connector, middlewares=(middleware,)) as s:
        async with s.get(f"{fake.base_url}/auth/me") as resp:
            await resp.read()
        fake.hold("me")
        first = asyncio.create_task(s.get(f"{fake.base_url}/auth/me"))
        await fake.wait_arrivals(1)
        results = await drive(clock, s.get(f"{fake.base_url}/auth/me"))
        assert isinstance(results[0], PoolTimeoutError)
        fake.release("me")
        (await first).release()
