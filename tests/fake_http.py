"""Plain-HTTP helpers for the fake server's own tests: one request, its envelope, a token.

The fake server's test modules (``test_fake_server``, ``test_fake_auth``, ``test_fake_faults``,
``test_fake_whatsapp``, ``test_fake_webhooks``) talk to it with a bare aiohttp session (the
``http`` fixture of ``tests/conftest.py``), not with the SDK, so that what the server answers is
checked independently of the client that reads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from apimw_async.testing import FakeAPIMW

T0 = "2026-01-01T00:00:00Z"  # FakeClock's default wall time, the start of a rate-limit window
SECRET = "whsec_your_secret_key"
ALL_MESSAGE_EVENTS = ["message.sent", "message.delivered", "message.read", "message.failed"]
CLIENT_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Reply:
    """One answer of the fake server: status, parsed envelope (``None`` if not JSON), raw text."""

    def __init__(self, status: int, body: Any, headers: CIMultiDictProxy[str], text: str) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.text = text

    @property
    def data(self) -> Any:
        assert self.body["success"] is True, self.body
        return self.body["data"]

    @property
    def code(self) -> str:
        assert self.body["success"] is False, self.body
        return str(self.body["error"]["code"])

    @property
    def message(self) -> str:
        return str(self.body["error"]["message"])


async def call(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    method: str,
    path: str,
    *,
    token: str | None = None,
    encoded: bool = False,
    **kwargs: Any,
) -> Reply:
    """``method`` ``fake.base_url + path`` (already percent-encoded if ``encoded``)."""
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = URL(fake.base_url + path, encoded=encoded)
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return Reply(resp.status, body, resp.headers, text)


async def token_pair(http: aiohttp.ClientSession, fake: FakeAPIMW, **kwargs: Any) -> dict[str, Any]:
    """The ``data`` of a successful ``POST /auth/token`` with the fake's credentials."""
    creds = fake.credentials
    reply = await call(
        http,
        fake,
        "POST",
        "/auth/token",
        json={"api_key": creds.api_key, "api_secret": creds.api_secret},
        **kwargs,
    )
    assert reply.status == 200, reply.text
    data: dict[str, Any] = reply.data
    return data


async def get_token(http: aiohttp.ClientSession, fake: FakeAPIMW) -> str:
    """A fresh access token."""
    return str((await token_pair(http, fake))["access_token"])


async def refresh(http: aiohttp.ClientSession, fake: FakeAPIMW, refresh_token: str) -> Reply:
    return await call(http, fake, "POST", "/auth/refresh", json={"refresh_token": refresh_token})


async def me(http: aiohttp.ClientSession, fake: FakeAPIMW, token: str) -> Reply:
    return await call(http, fake, "GET", "/auth/me", token=token)


def b64decode(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def send(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    to: str = "+1234567890",
    message: str = "Hello from the tests",
    **extra: Any,
) -> Reply:
    body = {"to": to, "message": message, **extra}
    return await call(http, fake, "POST", "/whatsapp/messages/send", token=token, json=body)


async def send_template(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, **fields: Any
) -> Reply:
    body = {"to": "+1234567890", "template": "order_confirmation", "language": "en", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    return await call(http, fake, "POST", "/whatsapp/messages/template", token=token, json=body)


async def status_of(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, message_id: str
) -> Reply:
    path = "/whatsapp/messages/" + quote(message_id, safe="")
    return await call(http, fake, "GET", path, token=token, encoded=True)


async def list_templates(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, **params: Any
) -> Reply:
    query = {k: str(v) for k, v in params.items()}
    return await call(http, fake, "GET", "/whatsapp/templates", token=token, params=query)


def expected_signature(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()
