"""Test support for code that uses ``apimw_async``.

:class:`FakeAPIMW` is a real local HTTP server implementing every documented APIMW endpoint
(auth, WhatsApp messages and templates, webhooks with signed deliveries, per-plan rate limits),
with fault injection (:class:`FaultPlan`) and counters (:class:`FakeStats`); :class:`FakeClock`
moves time by hand (or by itself whenever the event loop is idle), for the server's token
expiry, message statuses and webhook retries as well as for the SDK's token manager.
"""

from __future__ import annotations

from .._clock import ClockStalledError, FakeClock
from ._fake_server import FAULT_KINDS, PLAN_RATE_LIMITS, FakeAPIMW, FakeStats, FaultPlan
from ._fake_templates import DEFAULT_TEMPLATES
from ._fake_webhooks import WEBHOOK_EVENTS, FakeWebhook
from ._fake_whatsapp import PAGINATION_QUIRKS, FakeMessage

__all__ = [
    "DEFAULT_TEMPLATES",
    "FAULT_KINDS",
    "PAGINATION_QUIRKS",
    "PLAN_RATE_LIMITS",
    "WEBHOOK_EVENTS",
    "ClockStalledError",
    "FakeAPIMW",
    "FakeClock",
    "FakeMessage",
    "FakeStats",
    "FakeWebhook",
    "FaultPlan",
]
