"""Shared fixtures: a fake APIMW server on loopback and a fake clock driven by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from apimw_async import FakeClock
from apimw_async.testing import FakeAPIMW

T = TypeVar("T")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAPIMW]:
    async with FakeAPIMW(seed=1234) as server:
        yield server


@pytest.fixture
async def timed_fake(clock: FakeClock) -> AsyncIterator[FakeAPIMW]:
    """A fake server whose token expiry runs on the test's FakeClock."""
    async with FakeAPIMW(clock=clock, seed=1234) as server:
        yield server


async def drive(clock: FakeClock, *aws: Awaitable[Any]) -> list[Any]:
    """Await ``aws`` together, advancing ``clock`` whenever something sleeps on it.

    Results (or exceptions, returned not raised) in order. Time jumps straight to the next
    deadline, so backoffs and cool-downs take no real time.
    """
    gathered = asyncio.gather(*aws, return_exceptions=True)
    while not gathered.done():
        sleeper = asyncio.ensure_future(clock.wait_for_sleepers(1))
        await asyncio.wait({gathered, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        if sleeper.done():
            clock.advance_to_next_deadline()
        else:
            sleeper.cancel()
            await asyncio.gather(sleeper, return_exceptions=True)
    return list(gathered.result())
