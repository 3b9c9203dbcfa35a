"""The fake server's hub over real HTTP: lifecycle, dispatch and routing, common headers,
latency, the per-plan rate limit and the stats (``_fake_server.py``).

A plain aiohttp client (``tests/fake_http.py``) on the other side. Time moves only through
the FakeClock; waits are on the server's events, never on wall time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from apimw_async.testing import (
    PLAN_RATE_LIMITS,
    FakeAPIMW,
    FakeClock,
    FakeStats,
)
from tests.fake_http import (
    call,
    get_token,
    me,
    send,
    status_of,
    token_pair,
)

# Every test runs on the FakeClock (``clock``) with a seeded server (``fake``), as conftest.py
# provides them.
pytestmark = [pytest.mark.usefixtures("clock"), pytest.mark.apimw_fake(seed=1234)]


# --- lifecycle -------------------------------------------------------------------------------


async def test_urls_and_credentials() -> None:
    server = FakeAPIMW(api_key="ak_test_k", api_secret="sk_test_s")
    with pytest.raises(RuntimeError):
        _ = server.base_url
    assert server.credentials.api_key == "ak_test_k"
    assert server.credentials.api_secret == "sk_test_s"
    async with server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        with pytest.raises(RuntimeError):
            await server.start()
    await server.close()  # idempotent


async def test_close_interrupts_sleeping_requests(http: aiohttp.ClientSession) -> None:
    server = FakeAPIMW(api_latency=30.0)
    await server.start()
    task = asyncio.create_task(http.get(server.base_url + "/auth/me"))
    await server.wait_until(lambda s: s.me_calls == 1)
    # close() must not wait out the 30-s latency: a generous bound, far below it, catches that
    # without a timing threshold that a loaded machine could break.
    await asyncio.wait_for(server.close(), timeout=15)
    with pytest.raises(aiohttp.ClientError):
        await task


# --- authentication on every new endpoint ----------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/whatsapp/messages/send", {"to": "+1234567890", "message": "hi"}),
    (
        "POST",
        "/whatsapp/messages/template",
        {"to": "+1234567890", "template": "order_confirmation", "language": "en"},
    ),
    ("GET", "/whatsapp/messages/wamid.HBgLunknown", None),
    ("GET", "/whatsapp/templates", None),
    ("POST", "/webhooks", {"url": "https://127.0.0.1:9/hook", "events": ["message.read"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("how", ["missing", "garbled", "unknown", "expired", "revoked"])
async def test_every_endpoint_needs_a_valid_bearer(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    clock: FakeClock,
    token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    how: str,
) -> None:
    headers = {}
    expected = "INVALID_TOKEN"
    if how == "garbled":
        headers["Authorization"] = "Token abc"
    elif how == "unknown":
        headers["Authorization"] = "Bearer eyJ.not.issued"
    elif how == "expired":
        clock.advance(3600)
        headers["Authorization"] = f"Bearer {token}"
        expected = "EXPIRED_TOKEN"
    elif how == "revoked":
        fake.revoke_access_token(token)
        headers["Authorization"] = f"Bearer {token}"
        expected = "REVOKED_TOKEN"
    reply = await call(http, fake, method, path, headers=headers, json=body)
    assert reply.status == 401
    assert reply.code == expected
    assert reply.message
    assert fake.stats.unauthorized == 1
    assert fake.stats.messages_sent == 0
    assert fake.stats.webhooks_registered == 0
    assert fake.stats.api_calls == 1


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_endpoints_have_names_for_faults_and_stats(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    name = {
        "/whatsapp/messages/send": "send",
        "/whatsapp/messages/template": "template",
        "/whatsapp/templates": "templates",
        "/webhooks": "webhooks",
    }.get(path, "status")
    fake.faults.add(name, status=502)
    reply = await call(http, fake, method, path, token=token, json=body)
    assert reply.status == 502
    assert reply.code == "INTERNAL_ERROR"
    assert fake.stats.calls[name] == 1
    assert fake.stats.faults_injected == 1


async def test_send_answer_lost_after_commit(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    fake.faults.add("send", status=503, after=True)
    lost = await send(http, fake, token)
    assert lost.status == 503
    assert fake.stats.messages_sent == 1  # the message went out; the client cannot know
    [message] = fake.messages.values()
    assert message.to == "+1234567890"
    assert message.body == {"to": "+1234567890", "message": "Hello from the tests"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/whatsapp/messages/send", "POST"),
        ("PUT", "/whatsapp/messages/template", "POST"),
        ("POST", "/whatsapp/messages/wamid.HBgLabc", "GET"),
        ("POST", "/whatsapp/templates", "GET"),
        ("GET", "/webhooks", "POST"),
        ("DELETE", "/webhooks", "POST"),
    ],
)
async def test_wrong_methods(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, method: str, path: str, allow: str
) -> None:
    reply = await call(http, fake, method, path, token=token)
    assert reply.status == 405
    assert reply.code == "METHOD_NOT_ALLOWED"
    assert reply.headers["Allow"] == allow


# --- routing and common headers --------------------------------------------------------------


async def test_unknown_path_and_method(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    missing = await call(http, fake, "GET", "/whatsapp/nothing")
    assert missing.status == 404
    assert missing.code == "NOT_FOUND"
    async with http.get(fake.url + "/") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    wrong = await call(http, fake, "GET", "/auth/token")
    assert wrong.status == 405
    assert wrong.code == "METHOD_NOT_ALLOWED"
    assert wrong.headers["Allow"] == "POST"
    assert fake.stats.requests == 3
    assert fake.stats.unknown_requests == 3
    assert fake.stats.calls == {}
    assert fake.stats.api_calls == 0


async def test_rate_limit_headers_on_every_response(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake.faults.add("me", status=503)
    data = await token_pair(http, fake)
    replies = [
        await me(http, fake, data["access_token"]),  # injected 503
        await me(http, fake, data["access_token"]),  # 200
        await me(http, fake, "bad"),  # 401
        await call(http, fake, "GET", "/nope"),  # 404
    ]
    assert [r.status for r in replies] == [503, 200, 401, 404]
    window_end = (int(clock.time()) // 60 + 1) * 60
    remaining = []
    for reply in replies:
        assert reply.headers["X-RateLimit-Limit"] == "1000000"
        assert int(reply.headers["X-RateLimit-Reset"]) == window_end
        remaining.append(int(reply.headers["X-RateLimit-Remaining"]))
    assert remaining == [999_998, 999_997, 999_996, 999_995]
    request_ids = {r.headers["X-Request-Id"] for r in replies}
    assert len(request_ids) == 4

    clock.advance(60)
    later = await me(http, fake, data["access_token"])
    assert later.headers["X-RateLimit-Remaining"] == "999999"
    assert int(later.headers["X-RateLimit-Reset"]) == window_end + 60


# --- latency ---------------------------------------------------------------------------------


async def test_latency(http: aiohttp.ClientSession) -> None:
    async with FakeAPIMW(token_latency=0.03, api_latency=0.0) as fake:
        started = time.monotonic()
        token = await get_token(http, fake)
        assert time.monotonic() - started >= 0.03
        fake.token_latency = 0.0
        fake.api_latency = 0.03
        started = time.monotonic()
        assert (await me(http, fake, token)).status == 200
        assert time.monotonic() - started >= 0.03


# --- stats -----------------------------------------------------------------------------------


async def test_wait_until(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    await fake.wait_until(lambda s: s.requests == 0)  # already true: returns at once
    gate = asyncio.Event()

    async def client() -> None:
        await gate.wait()
        await token_pair(http, fake)

    task = asyncio.create_task(client())
    waiter = asyncio.create_task(fake.wait_until(lambda s: s.token_successes == 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    await asyncio.wait_for(waiter, 5)
    await task
    with pytest.raises(TimeoutError):
        await fake.wait_until(lambda s: s.token_successes == 2, timeout=0.02)


async def test_stats_reset_and_as_dict(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    await token_pair(http, fake)
    snapshot = fake.stats.as_dict()
    assert snapshot["token_calls"] == 1
    assert snapshot["requests"] == 1
    assert snapshot["calls"] == {"token": 1}
    fake.stats.reset()
    assert fake.stats == FakeStats()
    assert snapshot["calls"] == {"token": 1}  # the snapshot is a copy
    assert all(v == 0 for k, v in fake.stats.as_dict().items() if k != "calls")


# --- rate limiting ---------------------------------------------------------------------------


def test_plan_limits() -> None:
    assert dict(PLAN_RATE_LIMITS) == {
        "free": 10,
        "starter": 60,
        "professional": 300,
        "enterprise": None,
    }
    with pytest.raises(ValueError, match="plan"):
        FakeAPIMW(plan="gold")


async def test_not_enforced_by_default(http: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeAPIMW(clock=clock, plan="free") as fake:
        token = await get_token(http, fake)
        replies = [await send(http, fake, token) for _ in range(15)]
        assert all(r.status == 200 for r in replies)
        assert replies[-1].headers["X-RateLimit-Limit"] == "1000000"
        assert fake.stats.rate_limited == 0
        assert fake.limit_per_minute == 1_000_000


@pytest.mark.parametrize(
    ("plan", "rate_limit", "limit"),
    [("free", 1_000_000, 10), ("starter", 1_000_000, 60), ("professional", 7, 300),
     ("enterprise", 25, 25)],
)  # fmt: skip
async def test_quota_per_plan(
    http: aiohttp.ClientSession, clock: FakeClock, plan: str, rate_limit: int, limit: int
) -> None:
    async with FakeAPIMW(
        clock=clock, plan=plan, rate_limit=rate_limit, enforce_rate_limit=True
    ) as fake:
        token = await get_token(http, fake)
        assert fake.limit_per_minute == limit
        me = await call(http, fake, "GET", "/auth/me", token=token)
        assert me.data["tenant"]["plan"] == plan
        statuses = [me.status]
        for _ in range(limit):
            reply = await call(http, fake, "GET", "/whatsapp/templates", token=token)
            statuses.append(reply.status)
        assert statuses == [200] * limit + [429]
        assert fake.stats.rate_limited == 1


async def test_rate_limit_window(http: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeAPIMW(clock=clock, plan="free", enforce_rate_limit=True) as fake:
        window_end = int(clock.time()) + 60  # the clock starts on a window boundary
        token = await get_token(http, fake)
        replies = [await send(http, fake, token) for _ in range(5)]
        replies += [await call(http, fake, "GET", "/auth/me", token=token) for _ in range(3)]
        replies += [await call(http, fake, "GET", "/auth/me", token="bogus")]  # counts too
        replies += [await status_of(http, fake, token, "wamid.nope")]
        assert [r.status for r in replies] == [200] * 8 + [401, 404]
        for used, reply in enumerate(replies, start=1):
            assert reply.headers["X-RateLimit-Limit"] == "10"
            assert reply.headers["X-RateLimit-Remaining"] == str(10 - used)
            assert reply.headers["X-RateLimit-Reset"] == str(window_end)

        # Token and refresh calls do not count, but report the window.
        creds = fake.credentials
        minted = await call(
            http,
            fake,
            "POST",
            "/auth/token",
            json={"api_key": creds.api_key, "api_secret": creds.api_secret},
        )
        assert minted.status == 200
        assert minted.headers["X-RateLimit-Remaining"] == "0"

        clock.advance(15.5)
        limited = await send(http, fake, token)
        assert limited.status == 429
        assert limited.body == {
            "success": False,
            "error": {
                "code": "RATE_LIMIT_EXCEEDED",
                "message": "Rate limit exceeded. Please retry after 45 seconds.",
                "retry_after": 45,
            },
        }
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert limited.headers["X-RateLimit-Reset"] == str(window_end)
        assert "Retry-After" not in limited.headers
        assert fake.stats.messages_sent == 5  # a 429 performs nothing
        me = await call(http, fake, "GET", "/auth/me", token=token)
        assert me.status == 429  # /auth/me is in the same accounting
        assert fake.stats.rate_limited == 2

        clock.advance(44.2)
        almost = await send(http, fake, token)
        assert almost.body["error"]["retry_after"] == 1  # never 0
        clock.advance(0.3)  # the next window
        again = await send(http, fake, token)
        assert again.status == 200
        assert again.headers["X-RateLimit-Remaining"] == "9"
        assert again.headers["X-RateLimit-Reset"] == str(window_end + 60)
        assert fake.stats.messages_sent == 6


async def test_retry_after_header_option(http: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeAPIMW(
        clock=clock,
        plan="enterprise",
        rate_limit=1,
        enforce_rate_limit=True,
        retry_after_header=True,
    ) as fake:
        token = await get_token(http, fake)
        assert (await send(http, fake, token)).status == 200
        clock.advance(50)
        limited = await send(http, fake, token)
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "10"
        assert limited.body["error"]["retry_after"] == 10
        assert "10 seconds" in limited.message


async def test_rate_limit_can_be_switched_at_runtime(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    fake.plan = "free"
    assert (await call(http, fake, "GET", "/auth/me", token=token)).data["tenant"]["plan"] == (
        "free"
    )
    fake.enforce_rate_limit = True
    statuses = [(await send(http, fake, token)).status for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    fake.enforce_rate_limit = False
    assert (await send(http, fake, token)).status == 200
    with pytest.raises(ValueError, match="plan"):
        fake.plan = "platinum"
