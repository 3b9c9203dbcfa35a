"""FakeClock: manual advance, auto-advance when the event loop is idle, and stalled waits that
fail with a message instead of hanging.

Every assertion here is about order (what happened before the clock jumped), never about how
long something took in real time.
"""

from __future__ import annotations

import asyncio

import pytest

from apimw_async import Client
from apimw_async.testing import ClockStalledError, FakeAPIMW, FakeClock


async def test_auto_advance_jumps_to_the_earliest_sleep() -> None:
    clock = FakeClock(auto_advance=True)
    start = clock.monotonic()
    await clock.sleep(3600)
    assert clock.monotonic() == start + 3600
    assert clock.auto_jumps == 1


async def test_auto_advance_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(auto_advance=True)
    start = clock.monotonic()
    woke: list[float] = []

    async def nap(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.monotonic() - start)

    await asyncio.gather(nap(30), nap(5), nap(300), nap(5))
    assert woke == [5, 5, 30, 300]
    assert clock.auto_jumps == 3  # one jump per distinct deadline


async def test_manual_advance_still_works_with_auto_advance() -> None:
    clock = FakeClock(auto_advance=True)
    sleeper = asyncio.ensure_future(clock.sleep(60))
    await clock.wait_for_sleepers(1)  # returns at once: the loop never went idle
    clock.advance(60)
    await sleeper
    assert clock.auto_jumps == 0


async def test_the_clock_stays_still_while_loopback_io_is_in_flight() -> None:
    # A sleeper is pending the whole time, but a request in flight to the fake server keeps
    # the loop busy: every answer wakes the task reading it, so the clock never jumps mid-way.
    clock = FakeClock(auto_advance=True)
    async with FakeAPIMW() as fake, Client(fake.credentials, base_url=fake.base_url) as client:
        sleeper = asyncio.ensure_future(clock.sleep(10))
        await clock.wait_for_sleepers(1)
        for _ in range(30):
            await client.auth.me()
            await client.whatsapp.send_text("+14155550123", "hello")
        assert clock.auto_jumps == 0
        assert not sleeper.done()
        await sleeper
        assert clock.auto_jumps == 1


async def test_a_real_timer_due_within_the_grace_runs_first() -> None:
    clock = FakeClock(auto_advance=True, idle_grace=0.2)
    order: list[str] = []

    async def fake_sleep() -> None:
        await clock.sleep(1)
        order.append("fake")

    task = asyncio.ensure_future(fake_sleep())
    await asyncio.sleep(0.05)  # a real timer well inside the grace: the earliest wake-up
    order.append("real")
    await task
    assert order == ["real", "fake"]


async def test_the_clients_retry_backoff_needs_no_driving() -> None:
    # The hang: a lost refresh answer, then a backoff sleep on the fake clock.
    clock = FakeClock(auto_advance=True)
    fake = FakeAPIMW(clock=clock, token_lifetime=60, reuse_detection=True)
    async with fake, Client(fake.credentials, base_url=fake.base_url, clock=clock) as client:
        await client.auth.me()
        fake.faults.add("refresh", "drop", after=True)
        fake.faults.add("token", "status", status=503)
        clock.advance(60)
        await client.auth.me()
        assert fake.stats.refresh_reuse == 0
        assert client.tokens.stats.fallbacks >= 1
        assert clock.auto_jumps >= 1


async def test_a_sleep_nobody_advances_fails_on_a_manual_clock() -> None:
    clock = FakeClock(stall_timeout=0.2)

    async def backoff() -> None:
        await clock.sleep(2.5)

    with pytest.raises(ClockStalledError) as caught:
        await asyncio.ensure_future(backoff())
    message = str(caught.value)
    assert "FakeClock.sleep(2.5)" in message
    assert "backoff" in message
    assert "auto_advance=True" in message


async def test_wait_for_sleepers_that_never_come_fails() -> None:
    clock = FakeClock(auto_advance=True, stall_timeout=0.2)
    with pytest.raises(ClockStalledError, match=r"wait_for_sleepers\(2\) can never return"):
        await clock.wait_for_sleepers(2)


async def test_wait_for_sleepers_on_a_manual_clock_fails_too() -> None:
    clock = FakeClock(stall_timeout=0.2)
    with pytest.raises(ClockStalledError, match=r"wait_for_sleepers\(1\)"):
        await clock.wait_for_sleepers(1)


async def test_without_a_stall_timeout_a_manual_clock_waits_for_its_test() -> None:
    clock = FakeClock(stall_timeout=None)
    sleeper = asyncio.ensure_future(clock.sleep(1))
    await clock.wait_for_sleepers(1)
    assert clock._advancers == {}  # nothing watches the loop
    clock.advance(1)
    await sleeper


def test_one_clock_across_event_loops() -> None:
    clock = FakeClock(auto_advance=True)
    for _ in range(3):
        asyncio.run(clock.sleep(10))
    assert clock.auto_jumps == 3
    assert len(clock._advancers) == 1  # closed loops are forgotten


@pytest.mark.parametrize(
    "options", [{"idle_grace": 0}, {"idle_grace": -1}, {"idle_grace": 1, "stall_timeout": 0.5}]
)
def test_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="idle_grace"):
        FakeClock(**options)


def test_repr_shows_the_mode() -> None:
    assert "auto_advance=True" in repr(FakeClock(auto_advance=True))
    assert "auto_advance" not in repr(FakeClock())


async def test_the_plugin_clock_auto_advances(apimw_clock: FakeClock) -> None:
    assert apimw_clock.auto_advance
    await apimw_clock.sleep(86_400)
    assert apimw_clock.auto_jumps == 1


@pytest.mark.apimw_clock(auto_advance=False, stall_timeout=None)
async def test_the_plugin_clock_marker(apimw_clock: FakeClock) -> None:
    assert not apimw_clock.auto_advance
    assert apimw_clock.stall_timeout is None


async def test_a_periodic_real_ticker_does_not_hold_the_clock_for_ever() -> None:
    # uvicorn's main loop wakes every 0.1 s of real time; a served app must not keep the
    # clock still (and the test hanging) just because something ticks.
    clock = FakeClock(auto_advance=True, idle_grace=0.05)

    async def ticker() -> None:
        while True:  # noqa: ASYNC110 - a real-time ticker is the point
            await asyncio.sleep(0.1)

    task = asyncio.ensure_future(ticker())
    try:
        await clock.sleep(30)
        assert clock.auto_jumps == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_fast_ticker_does_not_hide_a_stalled_manual_clock() -> None:
    clock = FakeClock(stall_timeout=0.3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        with pytest.raises(ClockStalledError, match=r"FakeClock.sleep\(7\)"):
            await clock.sleep(7)
        assert ticks > 0  # it ticked all along
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_auto_advance_next_to_a_uvicorn_server_in_the_loop() -> None:
    uvicorn = pytest.importorskip("uvicorn")

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "lifespan"

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None)
    )
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.01)
        clock = FakeClock(auto_advance=True)
        await clock.sleep(3600)  # uvicorn's main loop ticks every 0.1 s meanwhile
        assert clock.auto_jumps == 1
    finally:
        server.should_exit = True
        await serving


# Answers that take a while, with this loop idle meanwhile: what the grace is for. Each
# answer wakes the task reading it, so however long the whole exchange lasts, the clock holds
# as long as every single answer comes within the grace (generous here: a loaded machine may
# schedule the other side late). An advancer blind to that progress would jump mid-way.
SLOW_ANSWER = 0.03
GRACE = 0.3
EXCHANGES = 20  # 20 x 30 ms: twice the grace


async def test_the_clock_stays_still_while_a_server_in_another_thread_answers() -> None:
    from .server_thread import ServerThread

    clock = FakeClock(auto_advance=True, idle_grace=GRACE)
    with ServerThread(api_latency=SLOW_ANSWER) as fake:
        async with Client(fake.credentials, base_url=fake.base_url) as client:
            sleeper = asyncio.ensure_future(clock.sleep(10))
            await clock.wait_for_sleepers(1)
            for _ in range(EXCHANGES):
                await client.auth.me()
            assert clock.auto_jumps == 0
            assert not sleeper.done()
            await sleeper
            assert clock.auto_jumps == 1


SPIN = """
local start = redis.call('TIME')
local ms = tonumber(ARGV[1])
repeat
    local now = redis.call('TIME')
until (now[1] - start[1]) * 1000 + (now[2] - start[2]) / 1000 >= ms
return 1
"""


async def test_the_clock_stays_still_while_redis_answers(redis_url: str) -> None:
    import redis.asyncio as aioredis

    clock = FakeClock(auto_advance=True, idle_grace=GRACE)
    client = aioredis.Redis.from_url(redis_url)
    try:
        sleeper = asyncio.ensure_future(clock.sleep(10))
        await clock.wait_for_sleepers(1)
        for _ in range(EXCHANGES):  # redis-server busy SLOW_ANSWER s per script
            assert await client.eval(SPIN, 0, str(SLOW_ANSWER * 1000)) == 1
        assert clock.auto_jumps == 0
        assert not sleeper.done()
        await sleeper
        assert clock.auto_jumps == 1
    finally:
        await client.aclose()


async def test_a_ticker_faster_than_the_grace_defers_a_jump_but_not_for_ever() -> None:
    clock = FakeClock(auto_advance=True, idle_grace=0.05)

    async def ticker() -> None:
        while True:  # noqa: ASYNC110 - a real-time ticker is the point
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(ticker())
    try:
        await clock.sleep(30)  # its timer is always due within the grace
        assert clock.auto_jumps == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
