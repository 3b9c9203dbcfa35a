"""Transport edge cases a real server cannot easily produce, mocked with aioresponses.

Everything goes through the real :class:`TokenManager` / :class:`Client` and the real aiohttp
``ClientSession``; aioresponses replaces ``ClientSession._request``, so exceptions such as a
refused connection or a timeout can be raised exactly where aiohttp would raise them, and the
request bodies the SDK sent can be inspected afterwards. Time is a :class:`FakeClock` advanced by
hand: no test sleeps.

aioresponses 0.7.9 does not work with aiohttp 3.14 (aioresponses issue #289), so this module
runs in a second environment with aiohttp 3.13 (``-m aioresponses``) and is skipped where
aioresponses is not installed.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from apimw_async import (
    AccessTokenError,
    BearerAuthMiddleware,
    Client,
    Credentials,
    FakeClock,
    InvalidTokenError,
    MalformedResponseError,
    RetryPolicy,
    TokenManager,
)

aioresponses = pytest.importorskip("aioresponses")

pytestmark = pytest.mark.aioresponses

BASE = "https://api.apimw.test/v1"
TOKEN_URL = f"{BASE}/auth/token"
REFRESH_URL = f"{BASE}/auth/refresh"
ME_URL = f"{BASE}/auth/me"

CREDS = Credentials("ak_test_aioresponses01", "sk_test_aioresponses_secret")
CREDS_BODY = {"api_key": CREDS.api_key, "api_secret": CREDS.api_secret}

ME_DATA = {
    "user": {"id": "usr_abc123", "email": "dev@example.com", "name": "Dev"},
    "tenant": {"id": "ten_xyz789", "name": "Acme", "plan": "professional", "status": "active"},
    "permissions": ["whatsapp:send"],
}


class MaxJitter(random.Random):
    """Full jitter pinned to its upper bound, so every backoff is known exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def mocked() -> Iterator[Any]:
    with aioresponses.aioresponses() as m:
        yield m


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data}


def grant(access: str, refresh: str | None = None, expires_in: Any = 3600) -> dict[str, Any]:
    data: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }
    if refresh is not None:
        data["refresh_token"] = refresh
    return ok(data)


def calls(m: Any, method: str, url: str) -> list[Any]:
    return list(m.requests.get((method, URL(url)), []))


def bodies(m: Any, url: str) -> list[Any]:
    """The JSON bodies POSTed to ``url``, in order."""
    return [call.kwargs.get("json") for call in calls(m, "POST", url)]


def authorizations(m: Any, method: str, url: str) -> list[str | None]:
    return [
        (call.kwargs.get("headers") or {}).get("Authorization") for call in calls(m, method, url)
    ]


def connector_error() -> aiohttp.ClientConnectorError:
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("api.apimw.test", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


def manager(clock: FakeClock, **kwargs: Any) -> TokenManager:
    return TokenManager(CREDS, base_url=BASE, clock=clock, rng=MaxJitter(0), **kwargs)


# --- token endpoint failures -----------------------------------------------------------------


async def test_connect_error_on_refresh_puts_the_refresh_token_back(
    mocked: Any, clock: FakeClock
) -> None:
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    mocked.post(REFRESH_URL, exception=connector_error())
    mocked.post(REFRESH_URL, payload=grant("at_2", "rt_2"))
    async with manager(clock) as tm:
        first = await tm.get_token()
        clock.advance(first.expires_in)  # expired: callers must wait for a new token
        waiter = asyncio.create_task(tm.get_token())
        await clock.wait_for_sleepers()  # backing off after the refused connection
        assert bodies(mocked, REFRESH_URL) == [{"refresh_token": "rt_1"}]
        assert clock.advance_to_next_deadline() == 0.25  # first backoff, jitter at its top
        token = await waiter
        assert token.access_token == "at_2"
        # The server never saw rt_1, so the same refresh token was sent again ...
        assert bodies(mocked, REFRESH_URL) == [{"refresh_token": "rt_1"}] * 2
        # ... rather than falling back to the credentials.
        assert bodies(mocked, TOKEN_URL) == [CREDS_BODY]
        assert tm.stats.refresh_calls == 2
        assert tm.stats.fallbacks == 0
        assert tm.stats.failures == 1


async def test_timeout_on_refresh_never_resends_the_refresh_token(
    mocked: Any, clock: FakeClock
) -> None:
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    mocked.post(REFRESH_URL, exception=asyncio.TimeoutError())
    mocked.post(TOKEN_URL, payload=grant("at_2", "rt_2"))
    mocked.post(REFRESH_URL, payload=grant("at_3", "rt_3"))
    async with manager(clock) as tm:
        first = await tm.get_token()
        clock.advance(first.expires_in)
        waiter = asyncio.create_task(tm.get_token())
        await clock.wait_for_sleepers()
        clock.advance_to_next_deadline()
        second = await waiter
        assert second.access_token == "at_2"
        # The server may have rotated rt_1 before the answer was lost: it is spent.
        assert bodies(mocked, REFRESH_URL) == [{"refresh_token": "rt_1"}]
        assert bodies(mocked, TOKEN_URL) == [CREDS_BODY, CREDS_BODY]
        assert tm.stats.fallbacks == 1

        # The pair from the credentials is used from now on (rt_2, never rt_1 again).
        clock.advance(second.expires_in)
        third = await tm.get_token()
        assert third.access_token == "at_3"
        assert bodies(mocked, REFRESH_URL) == [{"refresh_token": "rt_1"}, {"refresh_token": "rt_2"}]
        assert len(bodies(mocked, TOKEN_URL)) == 2


async def test_server_disconnect_on_token_call_is_retried_with_backoff(
    mocked: Any, clock: FakeClock
) -> None:
    mocked.post(TOKEN_URL, exception=aiohttp.ServerDisconnectedError())
    mocked.post(TOKEN_URL, exception=aiohttp.ServerDisconnectedError())
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    async with manager(clock) as tm:
        waiter = asyncio.create_task(tm.get_token())
        await clock.wait_for_sleepers()
        assert len(bodies(mocked, TOKEN_URL)) == 1
        assert clock.advance_to_next_deadline() == 0.25
        await clock.wait_for_sleepers()
        assert len(bodies(mocked, TOKEN_URL)) == 2
        assert clock.advance_to_next_deadline() == 0.5  # exponential
        token = await waiter
        assert token.access_token == "at_1"
        assert bodies(mocked, TOKEN_URL) == [CREDS_BODY] * 3
        assert tm.stats.token_calls == 3
        assert tm.stats.failures == 2
        assert tm.stats.tokens_obtained == 1


async def test_retry_after_http_date_is_honoured_up_to_the_cap(
    mocked: Any, clock: FakeClock
) -> None:
    # A day ahead of the real wall clock: the wait is capped at max_retry_after exactly.
    tomorrow = email.utils.formatdate(time.time() + 86_400, usegmt=True)
    error = {
        "success": False,
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retry_after": 5},
    }
    mocked.post(TOKEN_URL, status=429, payload=error, headers={"Retry-After": tomorrow})
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    policy = RetryPolicy(max_retry_after=40.0)
    async with manager(clock, retry_policy=policy, deadline=100.0) as tm:
        waiter = asyncio.create_task(tm.get_token())
        await clock.wait_for_sleepers()
        start = clock.monotonic()
        # header (not the body's 5 s, not the 0.25 s backoff), capped at 40, + 1 s jitter
        assert clock.next_deadline() == start + 41.0
        assert len(bodies(mocked, TOKEN_URL)) == 1
        clock.advance(40.0)
        await asyncio.sleep(0)
        assert not waiter.done()
        assert len(bodies(mocked, TOKEN_URL)) == 1  # still waiting out the advised time
        clock.advance(1.0)
        token = await waiter
        assert token.access_token == "at_1"
        assert len(bodies(mocked, TOKEN_URL)) == 2


async def test_retry_after_http_date_sets_the_wait(mocked: Any, clock: FakeClock) -> None:
    # HTTP-dates are judged against the real wall clock (one-second resolution), so the
    # wait is bounded rather than exact; the bound only fails if ~10 s pass in this test.
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    error = {"success": False, "error": {"code": "RATE_LIMIT_EXCEEDED", "retry_after": 2}}
    mocked.post(TOKEN_URL, status=429, payload=error, headers={"Retry-After": soon})
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    async with manager(clock, deadline=100.0) as tm:
        waiter = asyncio.create_task(tm.get_token())
        await clock.wait_for_sleepers()
        deadline = clock.next_deadline()
        assert deadline is not None
        wait = deadline - clock.monotonic()
        assert 20.0 < wait <= 31.0  # ~30 s from the header + up to 1 s jitter; body said 2
        clock.advance_to_next_deadline()
        assert (await waiter).access_token == "at_1"


async def test_html_200_on_token_endpoint_is_malformed(mocked: Any, clock: FakeClock) -> None:
    mocked.post(
        TOKEN_URL,
        status=200,
        body="<html><body>Welcome to nginx</body></html>",
        content_type="text/html",
    )
    async with manager(clock) as tm:
        with pytest.raises(MalformedResponseError) as info:
            await tm.get_token()
        assert info.value.status == 200
        assert CREDS.api_secret not in str(info.value)
        # Not transient: no retry, no sleeping.
        assert len(bodies(mocked, TOKEN_URL)) == 1
        assert clock.sleepers == 0
        assert tm.token is None


async def test_expires_in_as_a_string(mocked: Any, clock: FakeClock) -> None:
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1", expires_in="1800"))
    async with manager(clock) as tm:
        sent_at = clock.monotonic()
        token = await tm.get_token()
        assert token.expires_in == 1800.0
        assert token.obtained_at == sent_at
        assert token.expires_at == sent_at + 1800.0 - 5.0  # default 5 s expiry margin
        assert not token.needs_refresh(clock.monotonic())


# --- the client ------------------------------------------------------------------------------


async def test_401_with_empty_body_drops_the_token_and_replays_once(
    mocked: Any, clock: FakeClock
) -> None:
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    mocked.get(ME_URL, status=401, body=b"")
    mocked.post(REFRESH_URL, payload=grant("at_2", "rt_2"))
    mocked.get(ME_URL, payload=ok(ME_DATA))
    async with Client(CREDS, base_url=BASE, clock=clock, rng=MaxJitter(0)) as client:
        me = await client.auth.me()
        assert me.user.id == "usr_abc123"
        assert authorizations(mocked, "GET", ME_URL) == ["Bearer at_1", "Bearer at_2"]
        # The refresh token survived the invalidation: refresh, not re-authentication.
        assert bodies(mocked, REFRESH_URL) == [{"refresh_token": "rt_1"}]
        assert bodies(mocked, TOKEN_URL) == [CREDS_BODY]
        assert client.tokens.stats.invalidations == 1
        assert client.tokens.token is not None
        assert client.tokens.token.access_token == "at_2"


async def test_second_401_reaches_the_app_after_one_replay(mocked: Any, clock: FakeClock) -> None:
    refused = {"success": False, "error": {"code": "INVALID_TOKEN", "message": "Token is invalid"}}
    mocked.post(TOKEN_URL, payload=grant("at_1", "rt_1"))
    mocked.get(ME_URL, status=401, body=b"")
    mocked.post(REFRESH_URL, payload=grant("at_2", "rt_2"))
    mocked.get(ME_URL, status=401, payload=refused)
    mocked.post(REFRESH_URL, payload=grant("at_3", "rt_3"))  # must not be used
    async with Client(CREDS, base_url=BASE, clock=clock, rng=MaxJitter(0)) as client:
        with pytest.raises(AccessTokenError) as info:
            await client.auth.me()
        assert type(info.value) is InvalidTokenError
        assert info.value.status == 401
        assert info.value.code == "INVALID_TOKEN"
        assert "at_2" not in str(info.value)
        assert authorizations(mocked, "GET", ME_URL) == ["Bearer at_1", "Bearer at_2"]
        assert bodies(mocked, REFRESH_URL) == [{"refresh_token": "rt_1"}]
        assert client.tokens.stats.invalidations == 1


async def test_users_can_mock_a_client_with_aioresponses(mocked: Any) -> None:
    # What an application's own test looks like: no middleware, no fake server.
    mocked.post(TOKEN_URL, payload=grant("at_user", "rt_user"))
    mocked.get(ME_URL, payload=ok(ME_DATA), headers={"X-RateLimit-Remaining": "299"})
    async with Client(CREDS, base_url=BASE) as client:
        me = await client.auth.me()
        assert me.tenant.plan == "professional"
        assert me.has_permission("whatsapp:send")
        assert client.rate_limit is not None
        assert client.rate_limit.remaining == 299
    sent = calls(mocked, "GET", ME_URL)[0].kwargs["headers"]
    assert sent["Authorization"] == "Bearer at_user"
    assert sent["Accept"] == "application/json"
    assert authorizations(mocked, "GET", ME_URL) == ["Bearer at_user"]
    # The token call carries the credentials in its body and no Authorization header.
    assert bodies(mocked, TOKEN_URL) == [CREDS_BODY]
    assert authorizations(mocked, "POST", TOKEN_URL) == [None]


async def test_aioresponses_bypasses_session_middlewares(mocked: Any, clock: FakeClock) -> None:
    # aioresponses patches ClientSession._request, which is where aiohttp runs the session's
    # middlewares: a mocked session never calls BearerAuthMiddleware. That is why the
    # middleware is tested against the real fake server, not here.
    mocked.get(ME_URL, payload=ok(ME_DATA))
    async with manager(clock) as tm:
        middleware = BearerAuthMiddleware(tm)
        async with (
            aiohttp.ClientSession(middlewares=(middleware,)) as session,
            session.get(ME_URL) as resp,
        ):
            assert resp.status == 200
        assert tm.stats.token_calls == 0
        assert tm.token is None
    assert authorizations(mocked, "GET", ME_URL) == [None]
    assert calls(mocked, "POST", TOKEN_URL) == []
