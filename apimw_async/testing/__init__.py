"""Test support for code that uses ``apimw_async``.

:class:`FakeAPIMW` is a real local HTTP server implementing the APIMW auth endpoints, with
fault injection (:class:`FaultPlan`) and counters (:class:`FakeStats`); :class:`FakeClock` moves
time by hand, for both the server's token expiry and the SDK's token manager.
"""

from __future__ import annotations

from .._clock import FakeClock
from ._fake_server import FAULT_KINDS, FakeAPIMW, FakeStats, FaultPlan

__all__ = ["FAULT_KINDS", "FakeAPIMW", "FakeClock", "FakeStats", "FaultPlan"]
