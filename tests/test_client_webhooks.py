"""``client.webhooks.register`` against the fake server over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest

from apimw_async import (
    APIConnectionError,
    BadRequestError,
    Client,
    FakeClock,
    ServerError,
    ValidationError,
    Webhook,
)
from apimw_async.testing import FakeAPIMW

from .conftest import drive

HOOK = "https://example.com/apimw/hook"


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeAPIMW]:
    # No ownership handshake: nothing listens at the registered URLs.
    async with FakeAPIMW(clock=clock, verify_webhooks=False) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAPIMW, clock: FakeClock) -> AsyncIterator[Client]:
    async with Client(fake.credentials, base_url=fake.base_url, clock=clock) as client:
        yield client


async def test_register(client: Client, fake: FakeAPIMW, clock: FakeClock) -> None:
    hook = await client.webhooks.register(
        HOOK, ("message.delivered", "message.read"), secret="whsec_your_secret_key"
    )
    assert isinstance(hook, Webhook)
    assert hook.id.startswith("whk_")
    assert hook.url == HOOK
    assert hook.events == ("message.delivered", "message.read")
    assert hook.active is True
    assert hook.created_at == datetime.fromtimestamp(int(clock.time()), timezone.utc)
    assert hook.secret == "whsec_your_secret_key"
    assert "whsec" not in repr(hook)
    [registered] = fake.webhooks.values()
    assert registered.secret == "whsec_your_secret_key"
    assert registered.url == HOOK
    assert fake.stats.webhooks_registered == 1


async def test_register_inactive_without_secret(client: Client, fake: FakeAPIMW) -> None:
    hook = await client.webhooks.register(HOOK, ["message.sent"], active=False)
    assert hook.active is False
    assert hook.secret is None
    [registered] = fake.webhooks.values()
    assert registered.secret is None
    assert registered.active is False


@pytest.mark.parametrize(
    ("url", "events", "secret"),
    [
        ("http://example.com/hook", ["message.sent"], None),
        ("ftp://example.com/hook", ["message.sent"], None),
        (HOOK, [], None),
        (HOOK, "message.sent", None),
        (HOOK, ["message.sent", ""], None),
        (HOOK, ["message.sent"], ""),
    ],
)
async def test_register_checks_before_sending(
    client: Client, fake: FakeAPIMW, url: str, events: Any, secret: str | None
) -> None:
    with pytest.raises(ValidationError):
        await client.webhooks.register(url, events, secret=secret)
    assert fake.stats.calls.get("webhooks", 0) == 0


async def test_loopback_http_only_when_the_client_talks_plain_http(
    client: Client, fake: FakeAPIMW
) -> None:
    # This client talks plain http to the loopback fake, so a loopback receiver is fine ...
    assert client.allows_plain_http
    hook = await client.webhooks.register("http://127.0.0.1:8080/hook", ["message.read"])
    assert hook.url == "http://127.0.0.1:8080/hook"
    # ... but a client of the real (https) API refuses it before sending anything.
    async with Client(fake.credentials) as production:
        assert not production.allows_plain_http
        with pytest.raises(ValidationError, match="https"):
            await production.webhooks.register("http://127.0.0.1:8080/hook", ["message.read"])


async def test_validate_false_sends_as_given(fake: FakeAPIMW, clock: FakeClock) -> None:
    async with Client(
        fake.credentials, base_url=fake.base_url, clock=clock, validate=False
    ) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.webhooks.register(HOOK, ["message.exploded"])
    assert "unknown event type" in str(caught.value)
    assert fake.stats.calls["webhooks"] == 1


@pytest.mark.parametrize("kind", ["drop", "status"])
async def test_registration_is_not_repeated_once_it_may_have_reached_the_server(
    client: Client, fake: FakeAPIMW, kind: str
) -> None:
    fake.faults.add("webhooks", kind, status=503 if kind == "status" else None, after=True)
    with pytest.raises((APIConnectionError, ServerError)):
        await client.webhooks.register(HOOK, ["message.read"])
    assert fake.stats.calls["webhooks"] == 1
    assert fake.stats.webhooks_registered == 1


async def test_registration_is_repeated_after_a_429(
    client: Client, fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake.faults.add("webhooks", status=429, retry_after=1)
    [hook] = await drive(clock, client.webhooks.register(HOOK, ["message.read"]))
    assert isinstance(hook, Webhook)
    assert fake.stats.calls["webhooks"] == 2
    assert fake.stats.webhooks_registered == 1
