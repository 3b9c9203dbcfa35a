"""Fair admission: arrival order, the priority lane, cancellation and the admission timeout.

Order is asserted by order (who got a slot after whom), never by time; the timeout runs on the
injected FakeClock. The end-to-end tests (a tiny pool, a fake server that holds requests) are in
tests/test_client_admission.py.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from apimw_async import APITimeoutError, ConfigurationError, FakeClock, PoolTimeoutError
from apimw_async._admission import Admission, gate_for, session_limit
from apimw_async._retry import may_retry


async def settle() -> None:
    """Let every ready callback run (a handful of loop turns, no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def enter(admission: Admission, name: str, log: list[str], **kwargs: object) -> None:
    await admission.acquire(**kwargs)  # type: ignore[arg-type]
    log.append(name)


async def test_waiters_are_admitted_in_arrival_order() -> None:
    admission = Admission(2)
    log: list[str] = []
    await enter(admission, "a", log)
    await enter(admission, "b", log)
    tasks = [asyncio.create_task(enter(admission, f"w{i}", log)) for i in range(6)]
    await settle()
    assert admission.waiting == 6
    for _ in range(6):
        admission.release()
        await settle()
    assert log == ["a", "b", "w0", "w1", "w2", "w3", "w4", "w5"]
    await asyncio.gather(*tasks)
    assert admission.in_use == 2


async def test_a_newcomer_does_not_barge_ahead_of_a_woken_waiter() -> None:
    # The slot goes straight to the first waiter: one arriving right after the release (before
    # the waiter ran) queues behind it instead of taking the slot.
    admission = Admission(1)
    log: list[str] = []
    await enter(admission, "holder", log)
    first = asyncio.create_task(enter(admission, "first", log))
    await settle()
    admission.release()
    late = asyncio.create_task(enter(admission, "late", log))
    await settle()
    assert log == ["holder", "first"]
    admission.release()
    await asyncio.gather(first, late)
    assert log == ["holder", "first", "late"]


async def test_a_cancelled_waiter_leaves_the_queue_and_skips_nobody() -> None:
    admission = Admission(1)
    log: list[str] = []
    await enter(admission, "holder", log)
    a = asyncio.create_task(enter(admission, "a", log))
    b = asyncio.create_task(enter(admission, "b", log))
    c = asyncio.create_task(enter(admission, "c", log))
    await settle()
    b.cancel()
    await settle()
    assert admission.waiting == 2
    admission.release()
    await settle()
    admission.release()
    await asyncio.gather(a, c)
    assert log == ["holder", "a", "c"]
    assert admission.in_use == 1
    assert admission.waiting == 0


async def test_a_waiter_cancelled_after_its_slot_was_handed_over_passes_it_on() -> None:
    admission = Admission(1)
    log: list[str] = []
    await enter(admission, "holder", log)
    a = asyncio.create_task(enter(admission, "a", log))
    b = asyncio.create_task(enter(admission, "b", log))
    await settle()
    admission.release()  # hands the slot to a, which has not run yet ...
    a.cancel()  # ... and is cancelled before it does
    await asyncio.gather(a, return_exceptions=True)
    await b
    assert a.cancelled()
    assert log == ["holder", "b"]
    assert admission.in_use == 1


async def test_no_slot_leaks_when_every_waiter_is_cancelled() -> None:
    admission = Admission(3)
    for _ in range(3):
        await admission.acquire()
    waiters = [asyncio.create_task(admission.acquire()) for _ in range(20)]
    await settle()
    admission.release()
    admission.release()
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    admitted = sum(1 for t in waiters if not t.cancelled())
    assert admission.in_use == 1 + admitted
    for _ in range(admission.in_use):
        admission.release()
    assert admission.in_use == 0
    assert admission.waiting == 0
    # The queue is empty and every slot is free again.
    for _ in range(3):
        await asyncio.wait_for(admission.acquire(), 1)


async def test_priority_goes_first_and_may_use_the_reserved_slot() -> None:
    admission = Admission(3, reserve=1)
    log: list[str] = []
    await enter(admission, "app1", log)
    await enter(admission, "app2", log)
    # The third slot is reserved: an application request queues ...
    app3 = asyncio.create_task(enter(admission, "app3", log))
    await settle()
    assert log == ["app1", "app2"]
    # ... a priority acquisition takes the reserved slot at once.
    await enter(admission, "token", log, priority=True)
    # With every slot held, the next priority acquisition goes ahead of the queued app3.
    token2 = asyncio.create_task(enter(admission, "token2", log, priority=True))
    await settle()
    admission.release()
    await settle()
    assert log == ["app1", "app2", "token", "token2"]
    await token2
    admission.release()
    admission.release()
    await app3
    assert log[-1] == "app3"


async def test_reserve_never_takes_the_last_application_slot() -> None:
    admission = Admission(1, reserve=5)
    assert admission.reserve == 0
    admission = Admission(4)
    admission.reserve_lane(2)
    admission.reserve_lane(1)
    assert admission.reserve == 2


async def test_admission_timeout_raises_a_pool_timeout_on_the_injected_clock() -> None:
    clock = FakeClock()
    admission = Admission(1, clock=clock)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire(timeout=2.0))
    behind = asyncio.create_task(admission.acquire())
    await clock.wait_for_sleepers(1)
    clock.advance(1.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.1)
    with pytest.raises(PoolTimeoutError) as caught:
        await waiter
    error = caught.value
    assert isinstance(error, APITimeoutError)
    assert error.sent is False
    assert "2s" in str(error)
    assert "1 of 1 in use" in str(error)
    # The timed-out waiter left the queue: the one behind it is next.
    assert admission.waiting == 1
    admission.release()
    await behind
    assert admission.in_use == 1
    # Never retried: the timeout bounds the whole wait.
    assert not may_retry(error, idempotent=True)


async def test_a_waiter_admitted_in_time_is_not_timed_out_later() -> None:
    clock = FakeClock()
    admission = Admission(1, clock=clock)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire(timeout=1.0))
    await clock.wait_for_sleepers(1)
    admission.release()
    await waiter
    assert clock.sleepers == 0  # its timer is gone
    clock.advance(5)
    await settle()
    assert admission.in_use == 1


async def test_timeout_on_the_system_clock() -> None:
    admission = Admission(1)
    await admission.acquire()
    with pytest.raises(PoolTimeoutError):
        await admission.acquire(timeout=0.01)
    assert admission.waiting == 0
    assert admission.in_use == 1


async def test_slot_context_manager_releases_on_error() -> None:
    admission = Admission(1)
    seen: list[int] = []

    async def fail() -> None:
        async with admission.slot():
            seen.append(admission.in_use)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail()
    assert seen == [1]
    assert admission.in_use == 0


def test_bad_limits_are_configuration_errors() -> None:
    for bad in (0, -1, 1.5, True, "3", None):
        with pytest.raises(ConfigurationError):
            Admission(bad)  # type: ignore[arg-type]


async def test_one_gate_per_session_following_the_connector_limit() -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=7)) as session:
        assert session_limit(session) == 7
        gate = gate_for(session)
        assert gate is not None
        assert gate.limit == 7
        assert gate_for(session, 3) is gate
        assert gate_for(session, create=False) is gate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as unlimited:
        assert gate_for(unlimited) is None
        explicit = gate_for(unlimited, 5)
        assert explicit is not None
        assert explicit.limit == 5


async def test_try_acquire_never_jumps_the_queue() -> None:
    admission = Admission(1)
    assert admission.try_acquire()
    assert not admission.try_acquire()
    waiter = asyncio.create_task(admission.acquire())
    await settle()
    admission.release()  # handed to the waiter ...
    assert not admission.try_acquire()  # ... so none is free
    await waiter
    admission.release()
    assert admission.try_acquire()
