"""The fake server's webhooks over real HTTP (``_fake_webhooks.py``).

A small aiohttp receiver on loopback takes the deliveries; signatures are checked here with
:mod:`hmac` directly. Time moves only through the FakeClock; waits are on the server's
events (``wait_for_deliveries``), never on wall time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from apimw_async.testing import (
    WEBHOOK_EVENTS,
    FakeAPIMW,
    FakeClock,
    FakeStats,
)
from tests.fake_http import (
    ALL_MESSAGE_EVENTS,
    SECRET,
    T0,
    call,
    expected_signature,
    get_token,
    send,
    send_template,
)

# Every test runs on the FakeClock (``clock``) with a seeded server (``fake``), as conftest.py
# provides them.
pytestmark = [pytest.mark.usefixtures("clock"), pytest.mark.apimw_fake(seed=1234)]


# --- helpers ---------------------------------------------------------------------------------


def signature_ok(secret: str, received: Received) -> bool:
    header = received.headers.get("X-APIMW-Signature")
    return header is not None and hmac.compare_digest(
        header.encode(), expected_signature(secret, received.raw).encode()
    )


class Received:
    def __init__(self, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        self.headers = headers
        self.raw = raw
        self.json: Any = json.loads(raw)

    @property
    def type(self) -> str:
        return str(self.json.get("type"))


class Receiver:
    """A webhook receiver on loopback whose answers the test scripts."""

    def __init__(self) -> None:
        self.challenge_reply = "text"  # text | json | json-string | wrong | error | 201
        self.statuses: list[int] = []  # answers to the next event deliveries
        self.status = 200  # then this
        self.hang = False
        self.requests: list[Received] = []
        self.release = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, path: str = "/hooks/apimw") -> None:
        app = web.Application()
        app.router.add_post(path, self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}{path}"

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_requests(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    @property
    def handshakes(self) -> list[Received]:
        return [r for r in self.requests if r.type == "webhook.verification"]

    @property
    def events(self) -> list[Received]:
        return [r for r in self.requests if r.type != "webhook.verification"]

    def event_types(self) -> list[str]:
        return [r.type for r in self.events]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        received = Received(request.headers.copy(), raw)  # type: ignore[arg-type]
        self.requests.append(received)
        async with self._arrived:
            self._arrived.notify_all()
        if received.type == "webhook.verification":
            challenge = received.json["challenge"]
            mode = self.challenge_reply
            if mode == "text":
                return web.Response(text=challenge)
            if mode == "json":
                return web.json_response({"challenge": challenge})
            if mode == "json-string":
                return web.json_response(challenge)
            if mode == "error":
                return web.Response(status=500, text=challenge)
            if mode == "201":
                return web.Response(status=201, text=challenge)
            return web.Response(text="hello")
        if self.hang:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else self.status
        return web.Response(status=status, text="ok")


async def register(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    url: str,
    *,
    events: list[str] | None = None,
    secret: str | None = SECRET,
    **extra: Any,
) -> str:
    body: dict[str, Any] = {"url": url, "events": events or ALL_MESSAGE_EVENTS, **extra}
    if secret is not None:
        body["secret"] = secret
    reply = await call(http, fake, "POST", "/webhooks", token=token, json=body)
    assert reply.status == 201, reply.text
    await fake.wait_for_deliveries()  # the handshake
    return str(reply.data["id"])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


# --- POST /webhooks: registration ------------------------------------------------------------


async def test_register_webhook(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    clock: FakeClock,
    token: str,
    receiver: Receiver,
) -> None:
    clock.advance(30)
    body = {"url": receiver.url, "events": ["message.delivered", "message.read"], "secret": SECRET}
    reply = await call(http, fake, "POST", "/webhooks", token=token, json=body)
    assert reply.status == 201
    data = reply.data
    assert set(data) == {"id", "url", "events", "active", "created_at"}  # no secret
    assert re.fullmatch(r"whk_[0-9a-f]{24}", data["id"])
    assert data["url"] == receiver.url
    assert data["events"] == ["message.delivered", "message.read"]
    assert data["active"] is True
    assert data["created_at"] == "2026-01-01T00:00:30Z"
    assert SECRET not in reply.text
    webhook = fake.webhooks[data["id"]]
    assert webhook.secret == SECRET
    assert SECRET not in repr(webhook)
    await fake.wait_for_deliveries()
    assert webhook.verified
    assert fake.stats.webhooks_registered == 1
    assert fake.stats.verifications == 1
    assert fake.stats.calls["webhooks"] == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"events": ["message.read"]}, "url is required"),
        ({"url": "", "events": ["message.read"]}, "url is required"),
        ({"url": 5, "events": ["message.read"]}, "url is required"),
        ({"url": "http://example.com/hook", "events": ["message.read"]}, "HTTPS"),
        ({"url": "http://10.0.0.1/hook", "events": ["message.read"]}, "HTTPS"),
        ({"url": "ftp://127.0.0.1/hook", "events": ["message.read"]}, "HTTPS"),
        ({"url": "/hooks/apimw", "events": ["message.read"]}, "absolute"),
        ({"url": "https://", "events": ["message.read"]}, "url"),
        ({"url": "https://example.com/hook"}, "events must be a non-empty array"),
        ({"url": "https://example.com/hook", "events": []}, "events must be a non-empty array"),
        ({"url": "https://example.com/hook", "events": "message.read"}, "events must be"),
        ({"url": "https://example.com/hook", "events": [1]}, "events must be"),
        ({"url": "https://example.com/hook", "events": ["message.seen"]}, "'message.seen'"),
        (
            {"url": "https://example.com/hook", "events": ["message.read"], "secret": ""},
            "secret must be a non-empty string",
        ),
        (
            {"url": "https://example.com/hook", "events": ["message.read"], "secret": 123},
            "secret must be a non-empty string",
        ),
        (
            {"url": "https://example.com/hook", "events": ["message.read"], "active": "yes"},
            "active must be a boolean",
        ),
    ],
)
async def test_register_webhook_invalid(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, body: dict[str, Any], needle: str
) -> None:
    reply = await call(http, fake, "POST", "/webhooks", token=token, json=body)
    assert reply.status == 400
    assert reply.code == "INVALID_REQUEST"
    assert needle in reply.message, reply.message
    assert fake.webhooks == {}
    assert fake.stats.webhooks_registered == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/apimw",
        "https://127.0.0.1:9/hook",
        "http://127.0.0.1:9/hook",
        "http://127.8.9.10:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
    ],
)
async def test_register_webhook_urls_accepted(
    http: aiohttp.ClientSession, clock: FakeClock, url: str
) -> None:
    # No handshake here: nothing in this test may touch the network.
    async with FakeAPIMW(clock=clock, verify_webhooks=False) as fake:
        token = await get_token(http, fake)
        body = {"url": url, "events": ["message.read", "message.read"], "active": False}
        reply = await call(http, fake, "POST", "/webhooks", token=token, json=body)
        assert reply.status == 201, reply.text
        assert reply.data["events"] == ["message.read"]  # de-duplicated
        assert reply.data["active"] is False
        webhook = fake.webhooks[reply.data["id"]]
        assert webhook.verified  # verification switched off
        assert webhook.secret is None
        assert fake.stats.verifications == 0


# --- the ownership handshake -----------------------------------------------------------------


@pytest.mark.parametrize("reply_format", ["text", "json", "json-string"])
async def test_handshake_accepted(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    receiver: Receiver,
    reply_format: str,
) -> None:
    receiver.challenge_reply = reply_format
    webhook_id = await register(http, fake, token, receiver.url)
    assert fake.webhooks[webhook_id].verified
    [handshake] = receiver.handshakes
    assert set(handshake.json) == {"type", "challenge"}
    assert handshake.json["type"] == "webhook.verification"
    assert len(handshake.json["challenge"]) >= 16
    assert handshake.headers["Content-Type"] == "application/json"
    assert signature_ok(SECRET, handshake)
    assert fake.stats.verifications == 1
    assert fake.stats.verification_failures == 0
    assert receiver.events == []


@pytest.mark.parametrize("reply_format", ["wrong", "error", "201"])
async def test_handshake_refused(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    receiver: Receiver,
    reply_format: str,
) -> None:
    receiver.challenge_reply = reply_format
    webhook_id = await register(http, fake, token, receiver.url)
    webhook = fake.webhooks[webhook_id]
    assert not webhook.verified
    assert webhook.active  # registered, just not verified
    assert fake.stats.verifications == 0
    assert fake.stats.verification_failures == 1
    # An unverified webhook gets no events.
    await send(http, fake, token)
    await fake.wait_for_deliveries()
    assert receiver.events == []
    assert fake.stats.deliveries == 0
    # Verification can be run again once the receiver is fixed.
    receiver.challenge_reply = "json"
    assert await fake.verify_webhook(webhook_id)
    assert webhook.verified
    assert fake.stats.verifications == 1
    await send(http, fake, token)
    await fake.wait_for_deliveries()
    assert receiver.event_types() == ["message.sent"]
    # ... and a failed re-verification un-verifies it.
    receiver.challenge_reply = "wrong"
    assert not await fake.verify_webhook(webhook_id)
    assert not webhook.verified


async def test_handshake_without_secret_is_unsigned(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, receiver: Receiver
) -> None:
    await register(http, fake, token, receiver.url, secret=None)
    [handshake] = receiver.handshakes
    assert "X-APIMW-Signature" not in handshake.headers


async def test_handshake_unreachable_receiver(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    probe = Receiver()
    await probe.start()
    url = probe.url
    await probe.close()  # nothing listens there any more
    webhook_id = await register(http, fake, token, url)
    assert not fake.webhooks[webhook_id].verified
    assert fake.stats.verification_failures == 1


# --- deliveries ------------------------------------------------------------------------------


async def test_signed_deliveries_follow_the_status(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    clock: FakeClock,
    token: str,
    receiver: Receiver,
) -> None:
    webhook_id = await register(http, fake, token, receiver.url)
    message_id = (await send(http, fake, token)).data["message_id"]
    await fake.wait_for_deliveries()
    assert receiver.event_types() == ["message.sent"]
    assert clock.sleepers == 1  # the server's scheduler, waiting for the delivery time
    clock.advance(1)
    await fake.wait_for_deliveries()
    assert receiver.event_types() == ["message.sent", "message.delivered"]
    clock.advance(2)
    await fake.wait_for_deliveries()
    assert receiver.event_types() == ["message.sent", "message.delivered", "message.read"]
    assert clock.sleepers == 0  # nothing left to schedule

    times = ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:03Z"]
    for event, status, at in zip(
        receiver.events, ["sent", "delivered", "read"], times, strict=True
    ):
        assert event.headers["Content-Type"] == "application/json"
        assert signature_ok(SECRET, event), event.headers.get("X-APIMW-Signature")
        assert event.headers["X-APIMW-Signature"] == expected_signature(SECRET, event.raw)
        payload = event.json
        assert set(payload) == {"id", "type", "timestamp", "data"}
        assert re.fullmatch(r"evt_[0-9a-f]{24}", payload["id"])
        assert payload["type"] == f"message.{status}"
        assert payload["timestamp"] == at
        assert payload["data"] == {
            "message_id": message_id,
            "to": "+1234567890",
            "status": status,
            "timestamp": at,
        }
    assert len({e.json["id"] for e in receiver.events}) == 3
    webhook = fake.webhooks[webhook_id]
    assert webhook.deliveries == 3
    assert webhook.failures == 0
    assert fake.stats.deliveries == 3
    assert fake.stats.delivery_failures == 0


async def test_only_subscribed_events_are_delivered(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    clock: FakeClock,
    token: str,
    receiver: Receiver,
) -> None:
    await register(http, fake, token, receiver.url, events=["message.read", "message.failed"])
    await send(http, fake, token)
    await send(http, fake, token, to="+15550000000")  # fails
    await send_template(http, fake, token)
    clock.advance(1)
    await fake.wait_for_deliveries()
    assert receiver.event_types() == ["message.failed"]
    clock.advance(2)
    await fake.wait_for_deliveries()
    assert receiver.event_types() == ["message.failed", "message.read", "message.read"]
    failed = receiver.events[0].json["data"]
    assert failed["status"] == "failed"
    assert failed["to"] == "+15550000000"
    assert failed["timestamp"] == "2026-01-01T00:00:01Z"


async def test_unsigned_and_inactive_webhooks(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    unsigned, inactive = Receiver(), Receiver()
    await unsigned.start()
    await inactive.start()
    try:
        await register(http, fake, token, unsigned.url, secret=None)
        inactive_id = await register(http, fake, token, inactive.url, active=False)
        assert fake.webhooks[inactive_id].verified  # the handshake happens anyway
        await send(http, fake, token)
        await fake.wait_for_deliveries()
        [event] = unsigned.events
        assert "X-APIMW-Signature" not in event.headers
        assert inactive.events == []
    finally:
        await unsigned.close()
        await inactive.close()


async def test_every_webhook_gets_the_same_event(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    first, second = Receiver(), Receiver()
    await first.start()
    await second.start()
    try:
        await register(http, fake, token, first.url, secret="whsec_one")
        await register(http, fake, token, second.url, secret="whsec_two")
        await send(http, fake, token)
        await fake.wait_for_deliveries()
        [one], [two] = first.events, second.events
        assert one.raw == two.raw
        assert signature_ok("whsec_one", one)
        assert signature_ok("whsec_two", two)
        assert not signature_ok("whsec_two", one)
        assert fake.stats.deliveries == 2
    finally:
        await first.close()
        await second.close()


async def test_events_before_verification_are_not_delivered(
    http: aiohttp.ClientSession, clock: FakeClock, token: str, receiver: Receiver
) -> None:
    # ``token`` came from another server: this one needs its own.
    async with FakeAPIMW(clock=clock, verify_webhooks=False) as fake:
        fresh = await get_token(http, fake)
        webhook_id = await register(http, fake, fresh, receiver.url)
        fake.webhooks[webhook_id].verified = False
        await send(http, fake, fresh)
        await fake.wait_for_deliveries()
        assert receiver.events == []


async def test_inbound_message_with_non_ascii_text(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, receiver: Receiver
) -> None:
    await register(http, fake, token, receiver.url, events=["message.received"])
    text = "Olá! Pedido nº 42 chegou? 😀"
    message_id = fake.simulate_inbound_message("+5511987654321", text)
    await fake.wait_for_deliveries()
    [event] = receiver.events
    assert text.encode("utf-8") in event.raw  # raw UTF-8, not \\u escapes
    assert signature_ok(SECRET, event)
    # A receiver that re-serialises before checking computes another signature.
    reserialised = json.dumps(event.json).encode()
    assert reserialised != event.raw
    assert expected_signature(SECRET, reserialised) != event.headers["X-APIMW-Signature"]
    assert event.json["type"] == "message.received"
    assert event.json["data"] == {
        "message_id": message_id,
        "from": "+5511987654321",
        "type": "text",
        "text": text,
        "timestamp": T0,
    }
    assert "message.received" in WEBHOOK_EVENTS


# --- retries, disabling, duplicates ----------------------------------------------------------


async def test_failed_delivery_is_retried_on_the_clock(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    clock: FakeClock,
    token: str,
    receiver: Receiver,
) -> None:
    webhook_id = await register(http, fake, token, receiver.url, events=["message.sent"])
    receiver.statuses = [500, 503]
    await send(http, fake, token)
    await fake.wait_for_deliveries()
    assert len(receiver.events) == 1  # the immediate attempt
    assert fake.stats.delivery_failures == 1
    assert clock.next_deadline() == clock.monotonic() + 60
    clock.advance(59.5)
    await fake.wait_for_deliveries()
    assert len(receiver.events) == 1  # not yet
    clock.advance(0.5)
    await fake.wait_for_deliveries()
    assert len(receiver.events) == 2  # after 1 minute
    assert fake.stats.delivery_failures == 2
    clock.advance(299)
    await fake.wait_for_deliveries()
    assert len(receiver.events) == 2
    clock.advance(1)
    await fake.wait_for_deliveries()
    assert len(receiver.events) == 3  # after 5 more minutes: answered 200
    assert len({e.raw for e in receiver.events}) == 1  # the same event, byte for byte
    assert all(signature_ok(SECRET, e) for e in receiver.events)
    webhook = fake.webhooks[webhook_id]
    assert webhook.active
    assert (webhook.deliveries, webhook.failures) == (1, 2)
    assert (fake.stats.deliveries, fake.stats.delivery_failures) == (1, 2)
    assert clock.sleepers == 0


async def test_webhook_disabled_after_five_failures(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    clock: FakeClock,
    token: str,
    receiver: Receiver,
) -> None:
    webhook_id = await register(http, fake, token, receiver.url)
    receiver.status = 500
    await send(http, fake, token)  # message.sent now; delivered after 1 s; read after 3 s
    await fake.wait_for_deliveries()
    attempts_at = [0.0]
    start = clock.monotonic()
    for delay in (60, 300, 1800, 7200):
        clock.advance(delay)
        await fake.wait_for_deliveries()
        attempts_at.append(clock.monotonic() - start)
    webhook = fake.webhooks[webhook_id]
    sent_attempts = [e for e in receiver.events if e.type == "message.sent"]
    assert len(sent_attempts) == 5
    assert not webhook.active
    assert fake.stats.webhooks_disabled == 1
    assert attempts_at == [0, 60, 360, 2160, 9360]
    # The other events' pending retries were dropped; new events are not delivered.
    total = len(receiver.events)
    assert clock.sleepers == 0
    clock.advance(100_000)
    token = await get_token(http, fake)  # hours have passed on the clock
    assert (await send(http, fake, token)).status == 200
    await fake.wait_for_deliveries()
    assert len(receiver.events) == total
    assert webhook.failures == fake.stats.delivery_failures == total
    assert fake.stats.deliveries == 0
    # Re-enabling (no documented endpoint; a test helper) delivers again.
    receiver.status = 200
    webhook.active = True
    assert (await send(http, fake, token)).status == 200
    await fake.wait_for_deliveries()
    assert receiver.events[-1].type == "message.sent"
    assert fake.stats.deliveries == 1


async def test_custom_retry_schedule_and_2xx_is_not_200(
    http: aiohttp.ClientSession, clock: FakeClock, receiver: Receiver
) -> None:
    async with FakeAPIMW(clock=clock, webhook_retry_schedule=[0, 10]) as fake:
        token = await get_token(http, fake)
        webhook_id = await register(http, fake, token, receiver.url, events=["message.sent"])
        receiver.status = 204  # only 200 counts
        await send(http, fake, token)
        await fake.wait_for_deliveries()
        clock.advance(10)
        await fake.wait_for_deliveries()
        assert len(receiver.events) == 2
        assert not fake.webhooks[webhook_id].active
        with pytest.raises(ValueError, match="webhook_retry_schedule"):
            fake.webhook_retry_schedule = []


async def test_slow_receiver_times_out_and_is_retried(
    http: aiohttp.ClientSession, clock: FakeClock, receiver: Receiver
) -> None:
    async with FakeAPIMW(clock=clock) as fake:
        token = await get_token(http, fake)
        webhook_id = await register(http, fake, token, receiver.url, events=["message.sent"])
        fake.webhook_timeout = 0.05  # after the handshake, which has the same timeout
        receiver.hang = True  # never answers, however long the fake would wait
        await send(http, fake, token)
        await fake.wait_for_deliveries()
        assert fake.stats.delivery_failures == 1
        receiver.hang = False
        clock.advance(60)
        await fake.wait_for_deliveries()
        assert fake.stats.deliveries == 1
        assert fake.webhooks[webhook_id].failures == 1


async def test_duplicate_deliveries(
    http: aiohttp.ClientSession, clock: FakeClock, receiver: Receiver
) -> None:
    async with FakeAPIMW(clock=clock, duplicate_deliveries=1.0) as fake:
        token = await get_token(http, fake)
        await register(http, fake, token, receiver.url, events=["message.sent"])
        await send(http, fake, token)
        await fake.wait_for_deliveries()
        first, second = receiver.events
        assert first.raw == second.raw
        assert first.headers["X-APIMW-Signature"] == second.headers["X-APIMW-Signature"]
        assert fake.stats.duplicate_deliveries == 1
        assert fake.stats.deliveries == 2
    with pytest.raises(ValueError, match="duplicate_deliveries"):
        FakeAPIMW(duplicate_deliveries=1.5)


async def test_duplicates_are_seeded(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async def copies(seed: int) -> list[int]:
        before = len(receiver.events)
        async with FakeAPIMW(seed=seed, duplicate_deliveries=0.5, delivery_delay=None) as fake:
            token = await get_token(http, fake)
            await register(http, fake, token, receiver.url, events=["message.sent"])
            ids = [(await send(http, fake, token)).data["message_id"] for _ in range(20)]
            await fake.wait_for_deliveries()
            assert fake.stats.deliveries == 20 + fake.stats.duplicate_deliveries
        events = receiver.events[before:]
        return [sum(1 for e in events if e.json["data"]["message_id"] == i) for i in ids]

    first = await copies(7)
    assert set(first) == {1, 2}  # some events twice, some once
    assert first == await copies(7)
    assert first != await copies(8)


# --- inject_delivery -------------------------------------------------------------------------


async def test_inject_delivery(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, receiver: Receiver
) -> None:
    webhook_id = await register(http, fake, token, receiver.url)
    payload = {"id": "evt_custom", "type": "message.delivered", "data": {"message_id": "x"}}
    assert await fake.inject_delivery(webhook_id, payload) == 200
    assert await fake.inject_delivery(webhook_id, payload, signature="forged") == 200
    assert await fake.inject_delivery(webhook_id, payload, signature="malformed") == 200
    assert await fake.inject_delivery(webhook_id, payload, signature="missing") == 200
    raw = b'{"id":"evt_raw","type":"message.read","data":{}}'
    receiver.statuses = [401]
    assert await fake.inject_delivery(webhook_id, raw) == 401
    valid, forged, malformed, missing, as_bytes = receiver.events
    assert valid.json == payload
    assert signature_ok(SECRET, valid)
    assert forged.raw == valid.raw
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", forged.headers["X-APIMW-Signature"])
    assert not signature_ok(SECRET, forged)
    assert not re.fullmatch(r"sha256=[0-9a-f]{64}", malformed.headers["X-APIMW-Signature"])
    assert "X-APIMW-Signature" not in missing.headers
    assert as_bytes.raw == raw
    assert signature_ok(SECRET, as_bytes)
    assert fake.stats.injected_deliveries == 5
    assert fake.stats.deliveries == 0
    with pytest.raises(KeyError):
        await fake.inject_delivery("whk_unknown", payload)


async def test_inject_delivery_ignores_state_and_reports_no_answer(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, receiver: Receiver
) -> None:
    receiver.challenge_reply = "wrong"
    webhook_id = await register(http, fake, token, receiver.url, secret=None, active=False)
    assert await fake.inject_delivery(webhook_id, {"type": "message.sent"}) == 200
    assert "X-APIMW-Signature" not in receiver.events[0].headers
    await receiver.close()
    assert await fake.inject_delivery(webhook_id, {"type": "message.sent"}) is None


# --- lifecycle -------------------------------------------------------------------------------


async def test_close_abandons_scheduled_work(
    http: aiohttp.ClientSession, clock: FakeClock, receiver: Receiver
) -> None:
    fake = FakeAPIMW(clock=clock, webhook_timeout=30.0)
    await fake.start()
    token = await get_token(http, fake)
    await register(http, fake, token, receiver.url)
    receiver.status = 500
    await send(http, fake, token)
    await fake.wait_for_deliveries()
    assert clock.sleepers == 1  # the retry of message.sent, and delivered/read events
    receiver.hang = True
    clock.advance(60)
    await receiver.wait_for_requests(1 + 4)  # handshake, sent, delivered, retry, read
    assert fake.stats.deliveries == 0
    await fake.close()
    assert clock.sleepers == 0
    await fake.close()  # idempotent
    # Restartable, with a fresh delivery session.
    async with fake:
        receiver.hang = False
        receiver.status = 200
        token = await get_token(http, fake)
        await send(http, fake, token)
        await fake.wait_for_deliveries()
        assert receiver.events[-1].type == "message.sent"


async def test_wait_for_deliveries_times_out(
    http: aiohttp.ClientSession, clock: FakeClock, receiver: Receiver
) -> None:
    async with FakeAPIMW(clock=clock) as fake:
        token = await get_token(http, fake)
        await register(http, fake, token, receiver.url, events=["message.sent"])
        receiver.hang = True
        await send(http, fake, token)
        with pytest.raises(TimeoutError):
            await fake.wait_for_deliveries(timeout=0.05)


# --- stats -----------------------------------------------------------------------------------


async def test_new_counters_reset(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, receiver: Receiver
) -> None:
    await register(http, fake, token, receiver.url, events=["message.sent"])
    await send(http, fake, token)
    await fake.wait_for_deliveries()
    snapshot = fake.stats.as_dict()
    assert snapshot["messages_sent"] == 1
    assert snapshot["webhooks_registered"] == 1
    assert snapshot["verifications"] == 1
    assert snapshot["deliveries"] == 1
    fake.stats.reset()
    assert fake.stats == FakeStats()
