"""The fake server's auth endpoints over real HTTP: token, refresh, me, revoke and the auth
test helpers (``_fake_auth.py``).
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from apimw_async.testing import (
    FakeAPIMW,
    FakeClock,
)
from tests.fake_http import (
    b64decode,
    call,
    get_token,
    me,
    refresh,
    token_pair,
)

# Every test runs on the FakeClock (``clock``) with a seeded server (``fake``), as conftest.py
# provides them.
pytestmark = [pytest.mark.usefixtures("clock"), pytest.mark.apimw_fake(seed=1234)]


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
    first = await token_pair(http, fake)
    second = await token_pair(http, fake)
    assert first["access_token"] != second["access_token"]
    assert first["refresh_token"] != second["refresh_token"]


async def test_token_lifetime_is_settable(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    fake.token_lifetime = 90.5
    assert (await token_pair(http, fake))["expires_in"] == 90.5
    fake.token_lifetime = 60.0
    data = await token_pair(http, fake)
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
    data = await token_pair(http, fake)
    assert fake.stats.token_calls_with_bearer == 0
    await token_pair(http, fake, headers={"Authorization": f"Bearer {data['access_token']}"})
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
    first = await token_pair(http, fake)
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
        data = await token_pair(http, fake)
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
        first = await token_pair(http, fake)
        other = await token_pair(http, fake)  # another family, unaffected
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
        first = await token_pair(http, fake)
        second = (await refresh(http, fake, first["refresh_token"])).data
        assert (await me(http, fake, first["access_token"])).code == "REVOKED_TOKEN"
        assert (await me(http, fake, second["access_token"])).status == 200


# --- /auth/me --------------------------------------------------------------------------------


async def test_me_success(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    token = await get_token(http, fake)
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
    token = await get_token(http, fake)
    reply = await call(http, fake, "GET", "/auth/me", headers={"Authorization": f"bearer {token}"})
    assert reply.status == 200


async def test_access_token_expires_on_the_server_clock(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake.token_lifetime = 60
    token = await get_token(http, fake)
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
    data = await token_pair(http, fake)
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
    bearer = await get_token(http, fake)
    victim = await get_token(http, fake)
    reply = await call(http, fake, "POST", "/auth/revoke", token=bearer, json={field: victim})
    assert reply.status == 200
    assert not fake.is_access_token_valid(victim)
    assert fake.is_access_token_valid(bearer)


async def test_revoke_can_keep_the_refresh_token(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeAPIMW(clock=clock, revoke_refresh_with_access=False) as fake:
        data = await token_pair(http, fake)
        await call(http, fake, "POST", "/auth/revoke", token=data["access_token"])
        assert (await me(http, fake, data["access_token"])).code == "REVOKED_TOKEN"
        assert (await refresh(http, fake, data["refresh_token"])).status == 200


async def test_revoke_errors(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock
) -> None:
    token = await get_token(http, fake)
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
    data = await token_pair(http, fake)
    fake.expire_access_tokens()
    assert (await me(http, fake, data["access_token"])).code == "EXPIRED_TOKEN"
    fresh = (await refresh(http, fake, data["refresh_token"])).data
    assert (await me(http, fake, fresh["access_token"])).status == 200


async def test_revoke_access_token_helper(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    one = await token_pair(http, fake)
    two = await token_pair(http, fake)
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
    one = await token_pair(http, fake)
    fake.revoke_refresh_tokens()
    assert fake.is_access_token_valid(one["access_token"])
    assert (await refresh(http, fake, one["refresh_token"])).code == "INVALID_REFRESH_TOKEN"
    assert fake.stats.refresh_reuse == 0

    two = await token_pair(http, fake)
    fake.revoke_all()
    assert not fake.is_access_token_valid(two["access_token"])
    assert (await me(http, fake, two["access_token"])).code == "REVOKED_TOKEN"
    assert (await refresh(http, fake, two["refresh_token"])).code == "INVALID_REFRESH_TOKEN"
    # Credentials still work afterwards.
    three = await token_pair(http, fake)
    assert fake.is_access_token_valid(three["access_token"])
    assert not fake.is_access_token_valid("unknown")
