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


def test_middleware_admission_options(fake: FakeAPIMW) -> None:
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    with pytest.raises(ConfigurationError, match="fair_admission=False"):
        BearerAuthMiddleware(tm, fair_admission=False, max_connections=4)
    with pytest.raises(ConfigurationError):
        BearerAuthMiddleware(tm, fair_admission=True, admission_timeout=0)
    with pytest.raises(ConfigurationError):
        BearerAuthMiddleware(tm, max_connections=0)


async def test_middleware_admission_is_off_by_default_on_a_session_of_its_own(
    fake: FakeAPIMW,
) -> None:
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    async with tm, aiohttp.ClientSession(middlewares=(BearerAuthMiddleware(tm),)) as s:
        async with s.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == 200
        assert gate_for(s, create=False) is None
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    tuned = BearerAuthMiddleware(tm, max_connections=2)  # giving an option opts in
    async with tm, aiohttp.ClientSession(middlewares=(tuned,)) as s:
        async with s.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == 200
        gate = gate_for(s, create=False)
        assert gate is not None
        assert gate.limit == 2


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


# --- the token lane ------------------------------------------------------------------------------


async def saturate_and_refresh(
    fake: FakeAPIMW,
    clock: FakeClock,
    tm: TokenManager,
    session: aiohttp.ClientSession,
    send: Callable[[str], Awaitable[Any]],
    refreshed: asyncio.Event,
) -> None:
    """Every application slot of ``session`` held at the server and more requests queued;
    the token enters its refresh window; the refresh must still complete, and nobody waits."""
    await send("warm-up")
    gate = gate_for(session, create=False)
    assert gate is not None
    app_slots = gate.limit - gate.reserve
    assert gate.reserve == 1
    fake.arrivals.clear()
    waits = tm.stats.waits
    fake.hold("me")
    tasks = [asyncio.create_task(send(str(i))) for i in range(app_slots + 4)]
    await fake.wait_arrivals(app_slots)
    await queued(lambda: gate.waiting, 4)
    # Into the refresh window (the token stays valid): the next get_token() starts the refresh.
    token = tm.token
    assert token is not None
    clock.advance(token.refresh_at - clock.monotonic() + 0.001)
    assert await tm.get_token() is token
    await asyncio.wait_for(refreshed.wait(), 10)  # (a bound only against a hang)
    # The refresh went through while every application slot was still held at the server.
    assert len(fake.arrivals) == app_slots
    assert gate.waiting == 4
    assert fake.stats.refresh_calls == 1
    assert tm.token is not token
    fake.release("me")
    await asyncio.gather(*tasks)
    assert tm.stats.waits == waits  # no caller waited for a token
    assert gate.in_use == 0


def second_token_sets(event: asyncio.Event) -> Callable[[object], None]:
    seen: list[object] = []

    def on_token(token: object) -> None:
        seen.append(token)
        if len(seen) == 2:
            event.set()

    return on_token


async def test_refresh_on_a_saturated_shared_session_takes_the_reserved_lane(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake = timed_fake
    refreshed = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=3)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(
            fake.credentials,
            base_url=fake.base_url,
            session=session,
            clock=clock,
            on_token=second_token_sets(refreshed),
        )
        async with client:

            async def send(seq: str) -> None:
                await client.request("GET", "/auth/me", params={"seq": seq})

            await saturate_and_refresh(fake, clock, client.tokens, session, send, refreshed)


async def test_refresh_on_a_saturated_middleware_session_takes_the_reserved_lane(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake = timed_fake
    refreshed = asyncio.Event()
    middleware: list[BearerAuthMiddleware] = []

    async def late(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        return await middleware[0](request, handler)

    connector = aiohttp.TCPConnector(limit=3)
    async with aiohttp.ClientSession(connector=connector, middlewares=(late,)) as session:
        tm = TokenManager(
            fake.credentials,
            base_url=fake.base_url,
            session=session,
            clock=clock,
            on_token=second_token_sets(refreshed),
        )
        # No fair_admission given: on, because the manager shares this session.
        middleware.append(BearerAuthMiddleware(tm))
        async with tm:

            async def send(seq: str) -> None:
                async with session.get(f"{fake.base_url}/auth/me", params={"seq": seq}) as r:
                    assert r.status == 200
                    await r.read()

            await saturate_and_refresh(fake, clock, tm, session, send, refreshed)


async def test_a_one_connection_shared_session_cannot_deadlock_a_cold_start(
    fake: FakeAPIMW,
) -> None:
    # No slot can be reserved in a pool of one: the token call goes straight to the pool,
    # which is free while the admitted request waits for the token.
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        Client(fake.credentials, base_url=fake.base_url, session=session) as client,
    ):
        results = await asyncio.wait_for(asyncio.gather(*(client.auth.me() for _ in range(5))), 10)
        assert len(results) == 5
        assert fake.stats.token_calls == 1


async def test_a_cold_start_on_a_shared_session_fills_no_reserved_slot(fake: FakeAPIMW) -> None:
    # Many more requests than slots, all waiting for the first token while holding their
    # slots: the token call still has its reserved slot.
    connector = aiohttp.TCPConnector(limit=4)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        Client(fake.credentials, base_url=fake.base_url, session=session) as client,
    ):
        results = await asyncio.wait_for(asyncio.gather(*(client.auth.me() for _ in range(50))), 10)
        assert len(results) == 50
        assert fake.stats.token_calls == 1
        assert client.tokens.stats.waits >= 3


async def test_clients_sharing_a_session_share_one_queue(fake: FakeAPIMW) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        Client(fake.credentials, base_url=fake.base_url, session=session) as first,
        Client(fake.credentials, base_url=fake.base_url, session=session) as second,
    ):
        await first.auth.me()
        await second.auth.me()
        assert first.admission is second.admission
        gate = first.admission
        assert gate is not None
        fake.hold("me")
        a = asyncio.create_task(first.request("GET", "/auth/me", params={"seq": "a"}))
        await fake.wait_arrivals(1)
        b = asyncio.create_task(second.request("GET", "/auth/me", params={"seq": "b"}))
        c = asyncio.create_task(first.request("GET", "/auth/me", params={"seq": "c"}))
        await queued(lambda: gate.waiting, 2)
        fake.release("me")
        await asyncio.gather(a, b, c)
        assert seqs(fake) == ["a", "b", "c"]
