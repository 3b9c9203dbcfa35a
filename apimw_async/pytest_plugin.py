"""pytest fixtures for testing code that uses ``apimw_async``: opt in, nothing is auto-loaded.

Enable it with ``-p apimw_async.pytest_plugin`` on the command line, or in a conftest.py::

    pytest_plugins = ["apimw_async.pytest_plugin"]

Fixtures (function-scoped; they work with pytest-asyncio in its default, strict mode):

``apimw_fake``
    A running :class:`~apimw_async.testing.FakeAPIMW` on loopback. Configure it per test with
    ``@pytest.mark.apimw_fake(token_lifetime=2, reuse_detection=True, ...)``. Inject faults with
    ``apimw_fake.faults.add("token", "status", status=500)`` or ``faults.set_rate(...)``; expire
    or revoke tokens with ``expire_access_tokens()`` / ``revoke_refresh_tokens()`` /
    ``revoke_all()``; read ``apimw_fake.stats``.
``apimw_client``
    A :class:`~apimw_async.Client` pointed at ``apimw_fake``, closed after the test.
``apimw_env``
    Sets ``APIMW_BASE_URL``, ``APIMW_API_KEY`` and ``APIMW_API_SECRET`` to the fake's, so code
    calling ``Client.from_env()`` talks to it. Returns the fake.
``apimw_clock``
    A :class:`~apimw_async.testing.FakeClock` with ``auto_advance=True``. When a test asks for
    it, ``apimw_fake`` and ``apimw_client`` run on it: ``apimw_clock.advance(3600)`` expires
    every token at once, and whenever the event loop is idle (every task waits, nothing is
    about to arrive on a socket) the clock jumps to the earliest sleep on it, so backoffs and
    cool-downs take no real time and never hang the test. Configure it per test with
    ``@pytest.mark.apimw_clock(auto_advance=False, ...)`` (FakeClock keyword arguments); a
    clock that only moves by hand fails a sleep nobody advances with ClockStalledError.
``apimw_faults`` / ``apimw_stats``
    Shortcuts for ``apimw_fake.faults`` and ``apimw_fake.stats``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ._client import Client
from .testing import FakeAPIMW, FakeClock, FakeStats, FaultPlan

__all__ = [
    "apimw_client",
    "apimw_clock",
    "apimw_env",
    "apimw_fake",
    "apimw_faults",
    "apimw_stats",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "apimw_fake(**options): FakeAPIMW constructor options for the apimw_fake fixture",
    )
    config.addinivalue_line(
        "markers",
        "apimw_clock(**options): FakeClock options for the apimw_clock fixture "
        "(auto_advance=True unless given)",
    )


def _clock_if_requested(request: pytest.FixtureRequest) -> FakeClock | None:
    if "apimw_clock" in request.fixturenames:
        clock = request.getfixturevalue("apimw_clock")
        assert isinstance(clock, FakeClock)
        return clock
    return None


@pytest.fixture
def apimw_clock(request: pytest.FixtureRequest) -> FakeClock:
    """A FakeClock shared by the fake and the client, jumping ahead whenever the loop is idle.

    ``@pytest.mark.apimw_clock(auto_advance=False)`` gives a clock that moves only by hand.
    """
    options: dict[str, Any] = {"auto_advance": True}
    for marker in reversed(list(request.node.iter_markers("apimw_clock"))):
        options.update(marker.kwargs)
    return FakeClock(**options)


@pytest_asyncio.fixture
async def apimw_fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeAPIMW]:
    """A fake APIMW server on loopback, configured by ``@pytest.mark.apimw_fake(...)``."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("apimw_fake"))):
        options.update(marker.kwargs)
    clock = _clock_if_requested(request)
    if clock is not None:
        options.setdefault("clock", clock)
    async with FakeAPIMW(**options) as fake:
        yield fake


@pytest_asyncio.fixture
async def apimw_client(
    apimw_fake: FakeAPIMW, request: pytest.FixtureRequest
) -> AsyncIterator[Client]:
    """A Client for ``apimw_fake`` (on ``apimw_clock`` if the test uses it)."""
    clock = _clock_if_requested(request)
    async with Client(apimw_fake.credentials, base_url=apimw_fake.base_url, clock=clock) as client:
        yield client


@pytest.fixture
def apimw_env(apimw_fake: FakeAPIMW, monkeypatch: pytest.MonkeyPatch) -> FakeAPIMW:
    """Point ``Client.from_env()`` at ``apimw_fake`` for the duration of the test."""
    monkeypatch.setenv("APIMW_BASE_URL", apimw_fake.base_url)
    monkeypatch.setenv("APIMW_API_KEY", apimw_fake.credentials.api_key)
    monkeypatch.setenv("APIMW_API_SECRET", apimw_fake.credentials.api_secret)
    return apimw_fake


@pytest.fixture
def apimw_faults(apimw_fake: FakeAPIMW) -> FaultPlan:
    """The fault plan of ``apimw_fake``."""
    return apimw_fake.faults


@pytest.fixture
def apimw_stats(apimw_fake: FakeAPIMW) -> FakeStats:
    """The counters of ``apimw_fake``."""
    return apimw_fake.stats
