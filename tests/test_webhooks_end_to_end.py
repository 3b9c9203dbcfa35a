"""The aiohttp webhook receiver fed by the fake server's own signed deliveries, end to end.

Register the receiver's URL through the Client, let the fake run the ownership handshake,
send messages, move the (fake) clock so their status progresses, and check that the user's
handler sees each event once, and that forged deliveries never reach it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from apimw_async import Client, FakeClock
from apimw_async.testing import FakeAPIMW
from apimw_async.webhooks import MessageEvent, WebhookEvent, WebhookReceiver, make_aiohttp_app

SECRET = "whsec_end_to_end_secret"


class Seen:
    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.events) < count:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
async def receiver_url() -> AsyncIterator[tuple[str, Seen, WebhookReceiver]]:
    seen = Seen()
    receiver = WebhookReceiver(SECRET, seen)
    runner = web.AppRunner(make_aiohttp_app(receiver, path="/apimw"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/apimw", seen, receiver
    finally:
        await runner.cleanup()


async def test_signed_deliveries_reach_the_handler_once_each(
    receiver_url: tuple[str, Seen, WebhookReceiver], apimw_clock: FakeClock
) -> None:
    url, seen, receiver = receiver_url
    async with (
        FakeAPIMW(clock=apimw_clock, duplicate_deliveries=1.0, seed=5) as fake,
        Client(fake.credentials, base_url=fake.base_url, clock=apimw_clock) as client,
    ):
        hook = await client.webhooks.register(
            url, ["message.sent", "message.delivered", "message.read"], secret=SECRET
        )
        await fake.wait_for_deliveries()
        assert fake.webhooks[hook.id].verified  # the challenge was answered
        sent = await client.whatsapp.send_text("+14155550123", "hello")
        await fake.wait_for_deliveries()
        apimw_clock.advance(1.0)  # delivered
        await fake.wait_for_deliveries()
        apimw_clock.advance(2.0)  # read
        await fake.wait_for_deliveries()
        await seen.wait_for(3)
        await receiver.drain()
        types = [e.type for e in seen.events]
        assert types == ["message.sent", "message.delivered", "message.read"]
        assert all(
            isinstance(e, MessageEvent) and e.message_id == sent.message_id for e in seen.events
        )
        assert fake.stats.duplicate_deliveries >= 3  # every event was sent twice ...
        assert receiver.stats.duplicates >= 3  # ... and suppressed by the receiver

        for forged in ("forged", "malformed", "missing"):
            status = await fake.inject_delivery(
                hook.id,
                {"id": "evt_forged", "type": "message.read", "data": {"message_id": "x"}},
                signature=forged,  # type: ignore[arg-type]
            )
            assert status == 401
        await receiver.drain()
        assert len(seen.events) == 3
