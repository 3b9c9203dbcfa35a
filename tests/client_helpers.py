"""Helpers shared by the ``test_client_*`` modules."""

from __future__ import annotations

import random
from typing import Any

from apimw_async import Client, FakeClock
from apimw_async.testing import FakeAPIMW


class MaxRng(random.Random):
    """Every jitter at its maximum, so that waits are exact numbers."""

    def uniform(self, a: float, b: float) -> float:
        return b


def jittered(advised: float) -> float:
    """What ``RetryPolicy.delay`` gives for a server-advised wait under :class:`MaxRng`."""
    return advised + min(1.0, advised * 0.1)


def client_for(fake: FakeAPIMW, clock: FakeClock, **options: Any) -> Client:
    """A client of ``fake`` whose backoff runs on ``clock`` with jitter at its maximum."""
    return Client(fake.credentials, base_url=fake.base_url, clock=clock, rng=MaxRng(), **options)


async def free_port() -> int:
    """A loopback port nothing listens on (one a fake server just gave back)."""
    async with FakeAPIMW() as probe:
        return probe.port
