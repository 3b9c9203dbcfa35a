"""The bundled fake APIMW server, exercised over real HTTP with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from apimw_async.testing import FakeAPIMW, FakeClock, FakeStats, FaultPlan

CLIENT_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Reply:
    def __init__(self, status: int, body: Any, headers: Any, text: str) -> None:
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


async def call(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    method: str,
    path: str,
    *,
    token: str | None = None,
    **kwargs: Any,
) -> Reply:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, fake.base_url + path, headers=headers, **kwargs) as resp:
        text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return Reply(resp.status, body, resp.headers, text)


async def get_token(http: aiohttp.ClientSession, fake: FakeAPIMW, **kwargs: Any) -> dict[str, Any]:
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


async def refresh(http: aiohttp.ClientSession, fake: FakeAPIMW, refresh_token: str) -> Reply:
    return await call(http, fake, "POST", "/auth/refresh", json={"refresh_token": refresh_token})


async def me(http: aiohttp.ClientSession, fake: FakeAPIMW, token: str) -> Reply:
    return await call(http, fake, "GET", "/auth/me", token=token)


def b64decode(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeAPIMW]:
    async with FakeAPIMW(clock=clock, seed=1234) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 1.5
    with pytest.raises(aiohttp.ClientError):
        await task


# --- /auth/token -----------------------------------------------------------------------------


async def test_token_success(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock
) -> None:
    creds = fake.credentials
    reply = await call(
        http,
        fake,
        "POST",
        "/auth/token",
        json={"api_key": creds.api_key, "api_secret": creds.api_secret},
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.body["success"] is True
    data = reply.data
    assert set(data) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 3600
    assert type(data["expires_in"]) is int
    assert data["refresh_token"].startswith("rt_")
    header, payload, signature = data["access_token"].split(".")
    assert header == "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    assert b64decode(header) == {"alg": "HS256", "typ": "JWT"}
    claims = b64decode(payload)
    assert claims["sub"].startswith("usr_")
    assert claims["exp"] == int(clock.time()) + 3600
    assert claims["jti"]
    assert len(base64.urlsafe_b64decode(signature + "=")) == 32
    assert fake.is_access_token_valid(data["access_token"])
    assert fake.stats.token_calls == 1
    assert fake.stats.token_successes == 1
    assert fake.stats.calls == {"token": 1}
    assert fake.stats.api_calls == 0


async def test_each_token_is_unique(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    first = await get_token(http, fake)
    second = await get_token(http, fake)
    assert first["access_token"] != second["access_token"]
    assert first["refresh_token"] != second["refresh_token"]


async def test_token_lifetime_is_settable(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    fake.token_lifetime = 90.5
    assert (await get_token(http, fake))["expires_in"] == 90.5
    fake.token_lifetime = 60.0
    data = await get_token(http, fake)
    assert data["expires_in"] == 60
    assert type(data["expires_in"]) is int


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("ak_wrong", "sk_test_fake_secret_0123456789"),
        ("ak_test_fake0123456789", "sk_wrong"),
        ("", ""),
    ],
)
async def test_token_invalid_credentials(
    http: aiohttp.ClientSession, fake: FakeAPIMW, key: str, secret: str
) -> None:
    reply = await call(
        http, fake, "POST", "/auth/token", json={"api_key": key, "api_secret": secret}
    )
    assert reply.status == 401
    assert reply.body == {
        "success": False,
        "error": {"code": "INVALID_CREDENTIALS", "message": "Invalid API Key or Secret"},
    }
    assert fake.stats.invalid_credentials == 1
    assert fake.stats.token_successes == 0
    assert fake.stats.unauthorized == 0  # token endpoints are not bearer-authenticated


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": b"not json"},
        {"data": b""},
        {"json": ["api_key", "api_secret"]},
        {"json": {"api_key": "ak_test_fake0123456789"}},
        {"json": {"api_key": 1, "api_secret": 2}},
        {"data": {"api_key": "ak_test_fake0123456789", "api_secret": "x"}},  # form-encoded
    ],
)
async def test_token_invalid_request(
    http: aiohttp.ClientSession, fake: FakeAPIMW, kwargs: dict[str, Any]
) -> None:
    reply = await call(http, fake, "POST", "/auth/token", **kwargs)
    assert reply.status == 400
    assert reply.code == "INVALID_REQUEST"
    assert reply.body["error"]["message"]
    assert fake.stats.token_calls == 1
    assert fake.stats.invalid_credentials == 0


async def test_bearer_sent_to_token_endpoints_is_counted(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    data = await get_token(http, fake)
    assert fake.stats.token_calls_with_bearer == 0
    await get_token(http, fake, headers={"Authorization": f"Bearer {data['access_token']}"})
    assert fake.stats.token_calls_with_bearer == 1
    reply = await call(
        http,
        fake,
        "POST",
        "/auth/refresh",
        json={"refresh_token": data["refresh_token"]},
        token=data["access_token"],
    )
    assert reply.status == 200  # accepted, but recorded: clients must not send it
    assert fake.stats.token_calls_with_bearer == 2
    await me(http, fake, data["access_token"])
    assert fake.stats.token_calls_with_bearer == 2


# --- /auth/refresh ---------------------------------------------------------------------------


async def test_refresh_is_single_use(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    first = await get_token(http, fake)
    reply = await refresh(http, fake, first["refresh_token"])
    assert reply.status == 200
    second = reply.data
    assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["token_type"] == "Bearer"
    assert second["expires_in"] == 3600
    assert second["refresh_token"].startswith("rt_")
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await me(http, fake, second["access_token"])).status == 200
    # The previous access token stays valid until its own expiry by default.
    assert fake.is_access_token_valid(first["access_token"])

    again = await refresh(http, fake, first["refresh_token"])
    assert again.status == 401
    assert again.body == {
        "success": False,
        "error": {
            "code": "INVALID_REFRESH_TOKEN",
            "message": "Refresh token is invalid or expired",
        },
    }
    assert fake.stats.refresh_calls == 2
    assert fake.stats.refresh_successes == 1
    assert fake.stats.refresh_reuse == 1
    assert fake.stats.invalid_refresh == 1
    assert fake.stats.families_revoked == 0
    # Without reuse detection the newer tokens survive the replay.
    assert (await refresh(http, fake, second["refresh_token"])).status == 200


async def test_refresh_unknown_and_malformed(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    unknown = await refresh(http, fake, "rt_nope")
    assert unknown.status == 401
    assert unknown.code == "INVALID_REFRESH_TOKEN"
    bad_bodies: list[dict[str, Any]] = [
        {"json": {}},
        {"json": {"refresh_token": ""}},
        {"data": b"{"},
    ]
    for kwargs in bad_bodies:
        reply = await call(http, fake, "POST", "/auth/refresh", **kwargs)
        assert reply.status == 400
        assert reply.code == "INVALID_REQUEST"
    assert fake.stats.invalid_refresh == 1
    assert fake.stats.refresh_reuse == 0
    assert fake.stats.refresh_calls == 4


async def test_refresh_token_expires_on_the_server_clock(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeAPIMW(clock=clock, refresh_token_lifetime=100.0) as fake:
        data = await get_token(http, fake)
        clock.advance(99.0)
        fresh = await refresh(http, fake, data["refresh_token"])
        assert fresh.status == 200
        clock.advance(100.0)
        expired = await refresh(http, fake, fresh.data["refresh_token"])
        assert expired.status == 401
        assert expired.code == "INVALID_REFRESH_TOKEN"
        assert fake.stats.invalid_refresh == 1
        assert fake.stats.refresh_reuse == 0


async def test_reuse_detection_revokes_the_family(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeAPIMW(clock=clock, reuse_detection=True) as fake:
        first = await get_token(http, fake)
        other = await get_token(http, fake)  # another family, unaffected
        second = (await refresh(http, fake, first["refresh_token"])).data
        third = (await refresh(http, fake, second["refresh_token"])).data

        replay = await refresh(http, fake, first["refresh_token"])
        assert replay.status == 401
        assert replay.code == "INVALID_REFRESH_TOKEN"
        assert fake.stats.refresh_reuse == 1
        assert fake.stats.families_revoked == 1

        for token in (first, second, third):
            reply = await me(http, fake, token["access_token"])
            assert reply.status == 401
            assert reply.code == "REVOKED_TOKEN"
        assert (await refresh(http, fake, third["refresh_token"])).code == "INVALID_REFRESH_TOKEN"
        assert (await me(http, fake, other["access_token"])).status == 200
        assert (await refresh(http, fake, other["refresh_token"])).status == 200

        await refresh(http, fake, second["refresh_token"])  # family already revoked
        assert fake.stats.refresh_reuse == 2
        assert fake.stats.families_revoked == 1


async def test_revoke_access_on_refresh(http: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeAPIMW(clock=clock, revoke_access_on_refresh=True) as fake:
        first = await get_token(http, fake)
        second = (await refresh(http, fake, first["refresh_token"])).data
        assert (await me(http, fake, first["access_token"])).code == "REVOKED_TOKEN"
        assert (await me(http, fake, second["access_token"])).status == 200


# --- /auth/me --------------------------------------------------------------------------------


async def test_me_success(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    token = (await get_token(http, fake))["access_token"]
    reply = await me(http, fake, token)
    assert reply.status == 200
    data = reply.data
    assert data["user"]["id"].startswith("usr_")
    assert set(data["user"]) == {"id", "email", "name"}
    assert data["tenant"]["id"].startswith("ten_")
    assert data["tenant"]["plan"] == "professional"
    assert data["tenant"]["status"] == "active"
    assert data["tenant"]["name"]
    assert data["permissions"] == ["whatsapp:send", "whatsapp:templates", "webhooks:manage"]
    assert fake.stats.me_calls == 1
    assert fake.stats.api_calls == 1
    assert fake.stats.calls == {"token": 1, "me": 1}


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic abc", "Bearer", "Bearer ", "Bearer a b", "Bearer not-a-token"],
)
async def test_me_invalid_token(
    http: aiohttp.ClientSession, fake: FakeAPIMW, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = await call(http, fake, "GET", "/auth/me", headers=headers)
    assert reply.status == 401
    assert reply.code == "INVALID_TOKEN"
    assert reply.body["error"]["message"]
    assert fake.stats.unauthorized == 1


async def test_me_bearer_scheme_is_case_insensitive(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    token = (await get_token(http, fake))["access_token"]
    reply = await call(http, fake, "GET", "/auth/me", headers={"Authorization": f"bearer {token}"})
    assert reply.status == 200


async def test_access_token_expires_on_the_server_clock(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake.token_lifetime = 60
    token = (await get_token(http, fake))["access_token"]
    clock.advance(59.9)
    assert (await me(http, fake, token)).status == 200
    clock.advance(0.1)
    reply = await me(http, fake, token)
    assert reply.status == 401
    assert reply.code == "EXPIRED_TOKEN"
    assert not fake.is_access_token_valid(token)
    assert fake.stats.unauthorized == 1


# --- /auth/revoke ----------------------------------------------------------------------------


async def test_revoke_the_bearer_token(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    data = await get_token(http, fake)
    token = data["access_token"]
    reply = await call(http, fake, "POST", "/auth/revoke", token=token)
    assert reply.status == 200
    assert reply.body == {"success": True, "data": {"revoked": True}}
    assert not fake.is_access_token_valid(token)
    assert (await me(http, fake, token)).code == "REVOKED_TOKEN"
    # The refresh token issued with it is revoked too, by default.
    assert (await refresh(http, fake, data["refresh_token"])).code == "INVALID_REFRESH_TOKEN"
    assert fake.stats.refresh_reuse == 0
    # Idempotent: a second (e.g. retried) revoke with the same token still answers 200.
    again = await call(http, fake, "POST", "/auth/revoke", token=token, json={"token": token})
    assert again.status == 200
    assert again.data == {"revoked": True}
    assert fake.stats.revoke_calls == 2
    assert fake.stats.api_calls == 3


@pytest.mark.parametrize("field", ["token", "access_token"])
async def test_revoke_a_token_named_in_the_body(
    http: aiohttp.ClientSession, fake: FakeAPIMW, field: str
) -> None:
    bearer = (await get_token(http, fake))["access_token"]
    victim = (await get_token(http, fake))["access_token"]
    reply = await call(http, fake, "POST", "/auth/revoke", token=bearer, json={field: victim})
    assert reply.status == 200
    assert not fake.is_access_token_valid(victim)
    assert fake.is_access_token_valid(bearer)


async def test_revoke_can_keep_the_refresh_token(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeAPIMW(clock=clock, revoke_refresh_with_access=False) as fake:
        data = await get_token(http, fake)
        await call(http, fake, "POST", "/auth/revoke", token=data["access_token"])
        assert (await me(http, fake, data["access_token"])).code == "REVOKED_TOKEN"
        assert (await refresh(http, fake, data["refresh_token"])).status == 200


async def test_revoke_errors(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock
) -> None:
    token = (await get_token(http, fake))["access_token"]
    missing = await call(http, fake, "POST", "/auth/revoke", json={"token": token})
    assert missing.status == 401
    assert missing.code == "INVALID_TOKEN"
    unknown_bearer = await call(http, fake, "POST", "/auth/revoke", token="nope")
    assert unknown_bearer.code == "INVALID_TOKEN"
    bad_body = await call(http, fake, "POST", "/auth/revoke", token=token, data=b"[1")
    assert bad_body.status == 400
    assert bad_body.code == "INVALID_REQUEST"
    bad_field = await call(http, fake, "POST", "/auth/revoke", token=token, json={"token": 5})
    assert bad_field.status == 400
    unknown_target = await call(
        http, fake, "POST", "/auth/revoke", token=token, json={"token": "unknown"}
    )
    assert unknown_target.status == 200  # as RFC 7009: nothing to tell the caller
    assert fake.is_access_token_valid(token)
    assert fake.stats.unauthorized == 2
    clock.advance(3600)
    expired = await call(http, fake, "POST", "/auth/revoke", token=token)
    assert expired.code == "EXPIRED_TOKEN"
    assert fake.stats.unauthorized == 3


# --- test helpers ----------------------------------------------------------------------------


async def test_expire_access_tokens(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    data = await get_token(http, fake)
    fake.expire_access_tokens()
    assert (await me(http, fake, data["access_token"])).code == "EXPIRED_TOKEN"
    fresh = (await refresh(http, fake, data["refresh_token"])).data
    assert (await me(http, fake, fresh["access_token"])).status == 200


async def test_revoke_access_token_helper(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    one = await get_token(http, fake)
    two = await get_token(http, fake)
    fake.revoke_access_token(one["access_token"])
    fake.revoke_access_token(two["access_token"], include_refresh=False)
    fake.revoke_access_token("unknown")  # no-op
    assert (await me(http, fake, one["access_token"])).code == "REVOKED_TOKEN"
    assert (await me(http, fake, two["access_token"])).code == "REVOKED_TOKEN"
    assert (await refresh(http, fake, one["refresh_token"])).status == 401
    assert (await refresh(http, fake, two["refresh_token"])).status == 200


async def test_revoke_refresh_tokens_and_revoke_all(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    one = await get_token(http, fake)
    fake.revoke_refresh_tokens()
    assert fake.is_access_token_valid(one["access_token"])
    assert (await refresh(http, fake, one["refresh_token"])).code == "INVALID_REFRESH_TOKEN"
    assert fake.stats.refresh_reuse == 0

    two = await get_token(http, fake)
    fake.revoke_all()
    assert not fake.is_access_token_valid(two["access_token"])
    assert (await me(http, fake, two["access_token"])).code == "REVOKED_TOKEN"
    assert (await refresh(http, fake, two["refresh_token"])).code == "INVALID_REFRESH_TOKEN"
    # Credentials still work afterwards.
    three = await get_token(http, fake)
    assert fake.is_access_token_valid(three["access_token"])
    assert not fake.is_access_token_valid("unknown")


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
    data = await get_token(http, fake)
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


# --- faults ----------------------------------------------------------------------------------


async def test_status_fault_defaults(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    fake.faults.add("token")
    reply = await call(http, fake, "POST", "/auth/token", json={})
    assert reply.status == 500
    assert reply.code == "INTERNAL_ERROR"
    assert "retry_after" not in reply.body["error"]
    assert fake.stats.faults_injected == 1
    assert fake.stats.token_calls == 1
    assert fake.stats.token_successes == 0
    await get_token(http, fake)  # one-shot: the next call is normal
    assert fake.faults.pending() == 0


async def test_429_fault(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    token = (await get_token(http, fake))["access_token"]
    fake.faults.add("me", status=429)
    fake.faults.add("me", status=429, retry_after=7, retry_after_header=True)
    first = await me(http, fake, token)
    assert first.status == 429
    assert first.body["error"] == {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "Rate limit exceeded. Please retry after 1 seconds.",
        "retry_after": 1,
    }
    assert "Retry-After" not in first.headers
    assert first.headers["X-RateLimit-Remaining"] == "0"
    second = await me(http, fake, token)
    assert second.body["error"]["retry_after"] == 7
    assert second.headers["Retry-After"] == "7"
    assert fake.stats.faults_injected == 2


async def test_faults_are_fifo_with_times_and_wildcard(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    token = (await get_token(http, fake))["access_token"]
    fake.faults.add("me", status=502, times=2)
    fake.faults.add("*", status=503, code="SERVICE_UNAVAILABLE", message="down")
    fake.faults.add("me", status=401, code="EXPIRED_TOKEN")
    assert fake.faults.pending() == 4
    assert fake.faults.pending("me") == 3
    statuses = [(await me(http, fake, token)).status for _ in range(2)]
    assert statuses == [502, 502]
    wildcard = await call(http, fake, "POST", "/auth/refresh", json={"refresh_token": "x"})
    assert wildcard.status == 503
    assert wildcard.body["error"] == {"code": "SERVICE_UNAVAILABLE", "message": "down"}
    expired = await me(http, fake, token)
    assert expired.status == 401
    assert expired.code == "EXPIRED_TOKEN"
    assert (await me(http, fake, token)).status == 200
    assert fake.stats.faults_injected == 4
    assert fake.stats.unauthorized == 1  # injected 401 on a bearer endpoint


async def test_malformed_fault(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    fake.faults.add("token", "malformed")
    fake.faults.add(
        "token", "malformed", status=502, body=b'{"success": tru', content_type="application/json"
    )
    default = await call(http, fake, "POST", "/auth/token", json={})
    assert default.status == 200
    assert default.text == "<html>bad gateway</html>"
    assert default.headers["Content-Type"].startswith("text/html")
    custom = await call(http, fake, "POST", "/auth/token", json={})
    assert custom.status == 502
    assert custom.text == '{"success": tru'
    assert custom.headers["Content-Type"] == "application/json"
    assert fake.stats.faults_injected == 2


async def test_drop_fault_on_post(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    fake.faults.add("token", "drop")
    with pytest.raises(CLIENT_ERRORS):
        await get_token(http, fake)
    assert fake.stats.token_calls == 1
    assert fake.stats.token_successes == 0
    assert fake.stats.faults_injected == 1
    await get_token(http, fake)


async def test_drop_fault_on_get_is_retried_once_by_aiohttp(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    token = (await get_token(http, fake))["access_token"]
    fake.faults.add("me", "drop")
    assert (await me(http, fake, token)).status == 200  # aiohttp re-sent the idempotent GET
    assert fake.stats.me_calls == 2
    fake.faults.add("me", "drop", times=2)
    with pytest.raises(CLIENT_ERRORS):
        await me(http, fake, token)
    assert fake.stats.me_calls == 4
    assert fake.stats.faults_injected == 3


async def test_delay_fault_provokes_client_timeout(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    token = (await get_token(http, fake))["access_token"]
    fake.faults.add("me", "delay", delay=30.0)
    with pytest.raises(asyncio.TimeoutError):
        await call(http, fake, "GET", "/auth/me", token=token, timeout=aiohttp.ClientTimeout(0.05))
    assert fake.stats.faults_injected == 1
    fake.faults.add("me", "delay", delay=0.01)
    assert (await me(http, fake, token)).status == 200  # a short delay answers normally


async def test_refresh_answer_lost_after_rotation(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    data = await get_token(http, fake)
    fake.faults.add("refresh", status=503, after=True)
    lost = await refresh(http, fake, data["refresh_token"])
    assert lost.status == 503
    assert lost.code == "INTERNAL_ERROR"
    # The rotation was committed: the presented token is spent, a replay is reuse.
    assert fake.stats.refresh_successes == 1
    replay = await refresh(http, fake, data["refresh_token"])
    assert replay.code == "INVALID_REFRESH_TOKEN"
    assert fake.stats.refresh_reuse == 1
    # The client recovers with its credentials.
    await get_token(http, fake)


async def test_after_faults_commit_other_operations(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    fake.faults.add("token", "drop", after=True)
    with pytest.raises(CLIENT_ERRORS):
        await get_token(http, fake)
    assert fake.stats.token_successes == 1  # a family was issued, nobody got it

    data = await get_token(http, fake)
    fake.faults.add("revoke", "malformed", after=True)
    reply = await call(http, fake, "POST", "/auth/revoke", token=data["access_token"])
    assert reply.status == 200
    assert reply.body is None
    assert not fake.is_access_token_valid(data["access_token"])
    retried = await call(http, fake, "POST", "/auth/revoke", token=data["access_token"])
    assert retried.status == 200


async def test_delay_after_commits_before_answering(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    data = await get_token(http, fake)
    fake.faults.add("refresh", "delay", delay=30.0, after=True)
    task = asyncio.create_task(refresh(http, fake, data["refresh_token"]))
    await fake.wait_until(lambda s: s.refresh_successes == 1)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await refresh(http, fake, data["refresh_token"])).code == "INVALID_REFRESH_TOKEN"


async def test_fault_plan_validation(fake: FakeAPIMW) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        fake.faults.add("nope")
    with pytest.raises(ValueError, match="kind"):
        fake.faults.add("me", "explode")
    with pytest.raises(ValueError, match="times"):
        fake.faults.add("me", times=0)
    with pytest.raises(ValueError, match="status"):
        fake.faults.add("me", status=200)
    with pytest.raises(ValueError, match="rates"):
        fake.faults.set_rate("me", error_500=0.6, drop=0.6)
    with pytest.raises(ValueError, match="rates"):
        fake.faults.set_rate("me", malformed=-0.1)
    standalone = FaultPlan()
    standalone.add("anything")  # no endpoint list to check against
    assert standalone.pending() == 1
    standalone.clear()
    assert standalone.pending() == 0


async def _outcomes(http: aiohttp.ClientSession, seed: int) -> list[int]:
    async with FakeAPIMW(seed=seed) as fake:
        token = (await get_token(http, fake))["access_token"]
        fake.faults.set_rate("me", error_500=0.3, error_429=0.2, malformed=0.2)
        return [(await me(http, fake, token)).status for _ in range(40)]


async def test_rates_are_reproducible_with_a_seed(http: aiohttp.ClientSession) -> None:
    first = await _outcomes(http, seed=7)
    assert first == await _outcomes(http, seed=7)
    assert set(first) == {200, 429, 500}  # malformed answers are status 200 too
    assert first != await _outcomes(http, seed=8)


async def test_rates_per_endpoint_and_wildcard(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    token = (await get_token(http, fake))["access_token"]
    fake.faults.set_rate("*", error_429=1.0, retry_after=3)
    fake.faults.set_rate("me", malformed=1.0)
    assert (await me(http, fake, token)).text == "<html>bad gateway</html>"
    limited = await refresh(http, fake, "rt_x")
    assert limited.status == 429
    assert limited.body["error"]["retry_after"] == 3
    fake.faults.set_rate("me")  # all zero: back to the wildcard's rates
    assert (await me(http, fake, token)).status == 429
    fake.faults.add("me", status=500)  # queued faults come first
    assert (await me(http, fake, token)).status == 500
    fake.faults.clear()
    assert (await me(http, fake, token)).status == 200
    assert fake.stats.faults_injected == 4


async def test_drop_rate_on_post(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    fake.faults.set_rate("token", drop=1.0)
    with pytest.raises(CLIENT_ERRORS):
        await get_token(http, fake)


# --- latency ---------------------------------------------------------------------------------


async def test_latency(http: aiohttp.ClientSession) -> None:
    async with FakeAPIMW(token_latency=0.03, api_latency=0.0) as fake:
        started = time.monotonic()
        token = (await get_token(http, fake))["access_token"]
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
        await get_token(http, fake)

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
    await get_token(http, fake)
    snapshot = fake.stats.as_dict()
    assert snapshot["token_calls"] == 1
    assert snapshot["requests"] == 1
    assert snapshot["calls"] == {"token": 1}
    fake.stats.reset()
    assert fake.stats == FakeStats()
    assert snapshot["calls"] == {"token": 1}  # the snapshot is a copy
    assert all(v == 0 for k, v in fake.stats.as_dict().items() if k != "calls")
