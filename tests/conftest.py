"""Shared fixtures: a fake APIMW server on loopback and a fake clock driven by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import aiohttp
import pytest

from apimw_async import FakeClock
from apimw_async.testing import FakeAPIMW
from tests.fake_http import get_token

T = TypeVar("T")


# Our own tests use the fixtures we ship to users (apimw_async.pytest_plugin).
pytest_plugins = ["pytester", "apimw_async.pytest_plugin", "tests.conftest_redis"]


@pytest.fixture
def clock(apimw_clock: FakeClock) -> FakeClock:
    return apimw_clock


@pytest.fixture
def fake(apimw_fake: FakeAPIMW) -> FakeAPIMW:
    return apimw_fake


@pytest.fixture
def timed_fake(apimw_fake: FakeAPIMW, apimw_clock: FakeClock) -> FakeAPIMW:
    """A fake server whose token expiry runs on the test's FakeClock."""
    assert apimw_fake.clock is apimw_clock
    return apimw_fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A bare aiohttp session, to talk to the fake server without the SDK."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def token(http: aiohttp.ClientSession, fake: FakeAPIMW) -> str:
    """An access token of ``fake``, fetched with ``http``."""
    return await get_token(http, fake)


async def drive(clock: FakeClock, *aws: Awaitable[Any], sleepers: int = 1) -> list[Any]:
    """Await ``aws`` together, advancing ``clock`` whenever ``sleepers`` coroutines sleep on it.

    Results (or exceptions, returned not raised) in order. Time jumps straight to the next
    deadline, so backoffs and cool-downs take no real time. Pass the number of independent
    sleepers expected when all are blocked (e.g. one per token manager of a fleet), so that
    time does not move while one of them is still doing real I/O.
    """
    gathered = asyncio.gather(*aws, return_exceptions=True)
    while not gathered.done():
        sleeper = asyncio.ensure_future(clock.wait_for_sleepers(sleepers))
        await asyncio.wait({gathered, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        if sleeper.done():
            clock.advance_to_next_deadline()
        else:
            sleeper.cancel()
            await asyncio.gather(sleeper, return_exceptions=True)
    return list(gathered.result())
