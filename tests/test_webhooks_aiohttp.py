"""The aiohttp adapter, served for real on loopback by aiohttp's TestServer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from apimw_async.webhooks import (
    SIGNATURE_HEADER,
    MessageEvent,
    WebhookEvent,
    WebhookReceiver,
    aiohttp_handler,
    make_aiohttp_app,
)

SECRET = "whsec_aiohttp_test_secret"
PATH = "/hooks/apimw"


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Recorder:
    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.cancelled = 0

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def receiver(recorder: Recorder) -> WebhookReceiver:
    return WebhookReceiver(SECRET, recorder)


@pytest.fixture
async def client(
    receiver: WebhookReceiver,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(make_aiohttp_app(receiver, path=PATH))) as test_client:
        yield test_client


Client = TestClient[web.Request, web.Application]


async def test_signed_delivery_uses_the_raw_bytes(
    client: Client, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    # Odd spacing and key order: re-serialised JSON would not match the signature.
    body = b'{ "type" :"message.read",\n  "id": "evt_1", "data": {"message_id":"wamid.R"} }'
    response = await client.post(PATH, data=body, headers={SIGNATURE_HEADER: signature(body)})
    assert response.status == 200
    await receiver.drain()
    assert len(recorder.events) == 1
    event = recorder.events[0]
    assert isinstance(event, MessageEvent)
    assert (event.id, event.status, event.message_id) == ("evt_1", "read", "wamid.R")


async def test_lower_case_header_name(client: Client, receiver: WebhookReceiver) -> None:
    body = b'{"type": "message.sent", "id": "e"}'
    response = await client.post(PATH, data=body, headers={"x-apimw-signature": signature(body)})
    assert response.status == 200


async def test_forged_delivery_gets_401(
    client: Client, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    body = b'{"type": "message.sent", "id": "e"}'
    forged = await client.post(
        PATH, data=body, headers={SIGNATURE_HEADER: signature(body, "whsec_attacker")}
    )
    assert forged.status == 401
    unsigned = await client.post(PATH, data=body)
    assert unsigned.status == 401
    await receiver.drain()
    assert recorder.events == []
    assert receiver.stats.rejected == 2


async def test_bad_json_with_valid_signature_gets_400(client: Client) -> None:
    body = b"{not json"
    response = await client.post(PATH, data=body, headers={SIGNATURE_HEADER: signature(body)})
    assert response.status == 400


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_only_post_is_allowed(client: Client, method: str) -> None:
    response = await client.request(method, PATH)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


async def test_challenge_text_over_http(client: Client, recorder: Recorder) -> None:
    body = json.dumps({"type": "webhook.verification", "challenge": "ch_789"}).encode()
    response = await client.post(PATH, data=body)  # unsigned handshake is answered
    assert response.status == 200
    assert await response.text() == "ch_789"
    assert response.content_type == "text/plain"
    assert recorder.events == []


async def test_challenge_json_over_http() -> None:
    receiver = WebhookReceiver(SECRET, Recorder(), challenge_response="json")
    body = json.dumps({"type": "webhook.verification", "challenge": "ch_789"}).encode()
    async with TestClient(TestServer(make_aiohttp_app(receiver))) as client:
        response = await client.post(
            "/webhooks", data=body, headers={SIGNATURE_HEADER: signature(body)}
        )
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"challenge": "ch_789"}
        wrong = await client.post(
            "/webhooks", data=body, headers={SIGNATURE_HEADER: signature(body, "whsec_x")}
        )
        assert wrong.status == 401


async def test_200_comes_before_a_slow_handler_finishes(
    client: Client, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    recorder.gate.clear()
    body = b'{"type": "message.received", "id": "in_1", "from": "+1", "text": "hi"}'
    response = await client.post(PATH, data=body, headers={SIGNATURE_HEADER: signature(body)})
    assert response.status == 200
    await recorder.started.wait()
    assert receiver.pending == 1  # still running after the response arrived
    recorder.gate.set()
    await receiver.drain()
    assert receiver.pending == 0


async def test_duplicate_over_http(
    client: Client, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    body = b'{"type": "message.delivered", "id": "evt_dup"}'
    headers = {SIGNATURE_HEADER: signature(body)}
    statuses = [(await client.post(PATH, data=body, headers=headers)).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    await receiver.drain()
    assert len(recorder.events) == 1
    assert receiver.stats.duplicates == 2


async def test_app_cleanup_closes_the_receiver(recorder: Recorder) -> None:
    recorder.gate.clear()  # never opens: the handler is still running at shutdown
    receiver = WebhookReceiver(SECRET, recorder)
    app = make_aiohttp_app(receiver, close_timeout=0)
    body = b'{"type": "message.sent", "id": "e"}'
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/webhooks", data=body, headers={SIGNATURE_HEADER: signature(body)}
        )
        assert response.status == 200
        await recorder.started.wait()
    assert receiver.closed
    assert receiver.pending == 0
    assert recorder.cancelled == 1


async def test_app_cleanup_lets_running_handlers_finish(recorder: Recorder) -> None:
    recorder.gate.clear()
    receiver = WebhookReceiver(SECRET, recorder)
    body = b'{"type": "message.sent", "id": "e"}'
    async with TestClient(TestServer(make_aiohttp_app(receiver))) as client:
        response = await client.post(
            "/webhooks", data=body, headers={SIGNATURE_HEADER: signature(body)}
        )
        assert response.status == 200
        await recorder.started.wait()
        recorder.gate.set()  # done before or during cleanup: either way, not cancelled
    assert receiver.closed
    assert receiver.pending == 0
    assert recorder.cancelled == 0


async def test_handler_on_a_users_own_app(recorder: Recorder) -> None:
    receiver = WebhookReceiver([SECRET, "whsec_next"], recorder)
    app = web.Application()
    app.router.add_post("/custom", aiohttp_handler(receiver))
    body = b'{"type": "message.sent", "id": "e1"}'
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/custom", data=body, headers={SIGNATURE_HEADER: signature(body, "whsec_next")}
        )
        assert response.status == 200
    await receiver.aclose()
    assert [e.id for e in recorder.events] == ["e1"]
