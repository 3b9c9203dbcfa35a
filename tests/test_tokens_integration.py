"""The token lifecycle end to end: Client and TokenManager against the fake server on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any

import aiohttp
import pytest

from apimw_async import (
    AccessTokenError,
    APIMWError,
    AuthenticationError,
    BearerAuthMiddleware,
    Client,
    ConfigurationError,
    Credentials,
    FakeClock,
    InvalidCredentialsError,
    MalformedResponseError,
    Token,
    TokenManager,
)
from apimw_async._token_manager import _LoopState
from apimw_async.testing import FakeAPIMW

from .conftest import drive
from .server_thread import ServerThread


def client_for(fake: FakeAPIMW, **options: Any) -> Client:
    return Client(fake.credentials, base_url=fake.base_url, **options)


async def idle(tm: TokenManager) -> None:
    """Wait until no acquisition is in flight in this loop."""
    state: _LoopState = tm._state()
    while state.inflight is not None:
        await asyncio.gather(asyncio.shield(state.inflight), return_exceptions=True)


# --- single flight and expiry crossings --------------------------------------------------------


async def test_1000_concurrent_cold_requests_make_one_token_call(fake: FakeAPIMW) -> None:
    async with client_for(fake, connector_limit=200) as client:
        results = await asyncio.gather(*(client.auth.me() for _ in range(1000)))
        assert {r.tenant.plan for r in results} == {"professional"}
        assert fake.stats.token_calls == 1
        assert fake.stats.refresh_calls == 0
        assert fake.stats.unauthorized == 0
        assert client.tokens.stats.token_calls == 1


async def test_2s_tokens_crossed_many_times_one_refresh_each(clock: FakeClock) -> None:
    async with (
        FakeAPIMW(clock=clock, token_lifetime=2.0, reuse_detection=True) as fake,
        client_for(fake, clock=clock, rng=random.Random(2)) as client,
    ):
        lifetimes, step, workers = 15, 0.1, 40
        for _ in range(round(lifetimes * 2.0 / step)):
            await asyncio.gather(*(client.auth.me() for _ in range(workers)))
            await idle(client.tokens)
            clock.advance(step)
        stats = client.tokens.stats
        assert fake.stats.unauthorized == 0  # no request ever carried an expired token
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.families_revoked == 0
        assert fake.stats.token_calls == 1  # never fell back to the credentials
        # One refresh per token: every 75–80 % of a lifetime.
        assert lifetimes / 0.8 - 1 <= fake.stats.refresh_calls <= lifetimes / 0.75 + 1
        assert stats.refresh_calls == fake.stats.refresh_calls
        assert stats.waits == workers  # only the cold start waited


async def test_real_time_expiry_crossings_under_load_have_no_app_errors() -> None:
    # Real clock, 1-s tokens, 50 workers for ~3 s: only invariants are asserted (no timings).
    async with (
        FakeAPIMW(token_lifetime=1.0, token_latency=0.02, reuse_detection=True) as fake,
        client_for(fake) as client,
    ):
        errors: list[BaseException] = []
        stop = time.monotonic() + 3.0

        async def worker() -> None:
            while time.monotonic() < stop:
                try:
                    await client.auth.me()
                except APIMWError as exc:  # pragma: no cover - reported by the assertion
                    errors.append(exc)

        await asyncio.gather(*(worker() for _ in range(50)))
        assert errors == []
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.families_revoked == 0
        assert fake.stats.refresh_calls >= 1


# --- faults ------------------------------------------------------------------------------------


async def test_token_endpoint_fault_rates_never_reach_the_app(clock: FakeClock) -> None:
    async with (
        FakeAPIMW(clock=clock, token_lifetime=2.0, reuse_detection=True, seed=7) as fake,
        client_for(fake, clock=clock, rng=random.Random(7)) as client,
    ):
        for endpoint in ("token", "refresh"):
            fake.faults.set_rate(endpoint, error_500=0.2, error_429=0.1, drop=0.05, retry_after=1)
        failures = []
        for _ in range(200):
            results = await drive(clock, *(client.auth.me() for _ in range(20)))
            failures += [r for r in results if isinstance(r, BaseException)]
            clock.advance(0.1)
        assert failures == []
        assert fake.stats.faults_injected > 0
        assert fake.stats.refresh_reuse == 0
        assert client.tokens.stats.failures == fake.stats.faults_injected


@pytest.mark.parametrize("kind", ["drop", "status"])
async def test_refresh_answer_lost_after_rotation_recovers_with_credentials(
    timed_fake: FakeAPIMW, clock: FakeClock, kind: str
) -> None:
    fake = timed_fake
    fake.reuse_detection = True
    async with client_for(fake, clock=clock) as client:
        await client.auth.me()
        fake.faults.add("refresh", kind, status=502, after=True)
        clock.advance(3600)
        [me] = await drive(clock, client.auth.me())
        assert me.user.id.startswith("usr_")
        assert fake.stats.refresh_successes == 1  # the server did rotate ...
        assert fake.stats.refresh_calls == 1  # ... and the spent token was never resent
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.token_calls == 2  # credentials instead
        assert client.tokens.stats.fallbacks == 1


async def test_refresh_timeout_is_not_resent(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    fake = timed_fake
    async with client_for(fake, clock=clock, request_timeout=0.2) as client:
        await client.auth.me()
        fake.faults.add("refresh", "delay", delay=5.0, after=True)
        clock.advance(3600)
        [me] = await drive(clock, client.auth.me())
        assert isinstance(me.permissions, tuple)
        assert fake.stats.refresh_calls == 1
        assert fake.stats.token_calls == 2
        assert fake.stats.refresh_reuse == 0


async def test_invalid_refresh_token_falls_back_to_credentials(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    fake = timed_fake
    async with client_for(fake, clock=clock) as client:
        await client.auth.me()
        fake.revoke_refresh_tokens()
        clock.advance(3600)
        await client.auth.me()
        assert fake.stats.invalid_refresh == 1
        assert fake.stats.token_calls == 2
        assert client.tokens.stats.fallbacks == 1


async def test_server_side_expiry_many_concurrent_401s_one_refresh(fake: FakeAPIMW) -> None:
    async with client_for(fake) as client:
        await client.auth.me()
        fake.expire_access_tokens()
        results = await asyncio.gather(*(client.auth.me() for _ in range(50)))
        assert len(results) == 50
        assert fake.stats.unauthorized == 50  # each request saw one 401 ...
        assert fake.stats.refresh_calls == 1  # ... but only the first dropped the token
        assert client.tokens.stats.invalidations == 1


async def test_revoked_family_recovers_through_the_credentials(fake: FakeAPIMW) -> None:
    async with client_for(fake) as client:
        await client.auth.me()
        fake.revoke_all()
        me = await client.auth.me()
        assert me.tenant.status == "active"
        assert fake.stats.token_calls == 2


async def test_a_second_401_reaches_the_app_typed(fake: FakeAPIMW) -> None:
    async with client_for(fake) as client:
        await client.auth.me()
        fake.faults.add("me", "status", status=401, code="INVALID_TOKEN", times=2)
        with pytest.raises(AccessTokenError) as info:
            await client.auth.me()
        assert info.value.status == 401
        assert info.value.code == "INVALID_TOKEN"


async def test_wrong_credentials_raise_typed_and_call_once(fake: FakeAPIMW) -> None:
    bad = Credentials(fake.credentials.api_key, "sk_wrong_secret_000000")
    async with Client(bad, base_url=fake.base_url) as client:
        results = await asyncio.gather(
            *(client.auth.me() for _ in range(100)), return_exceptions=True
        )
        assert all(isinstance(r, InvalidCredentialsError) for r in results)
        assert results[0].status == 401  # type: ignore[union-attr]
        assert results[0].code == "INVALID_CREDENTIALS"  # type: ignore[union-attr]
        with pytest.raises(InvalidCredentialsError):
            await client.auth.me()
        assert fake.stats.token_calls == 1


async def test_malformed_token_answer_is_typed_and_recoverable(fake: FakeAPIMW) -> None:
    async with client_for(fake) as client:
        fake.faults.add("token", "malformed")
        with pytest.raises(MalformedResponseError):
            await client.auth.me()
        fake.faults.add("token", "malformed", body=b'{"success": true, "data": {"nope": 1}}')
        with pytest.raises(MalformedResponseError):
            await client.auth.me()
        assert (await client.auth.me()).user.id


async def test_revoke_clears_the_pair_and_the_next_call_reauthenticates(fake: FakeAPIMW) -> None:
    async with client_for(fake) as client:
        await client.auth.me()
        token = client.tokens.token
        assert token is not None
        assert await client.auth.revoke() is True
        assert not fake.is_access_token_valid(token.access_token)
        assert client.tokens.token is None
        await client.auth.me()
        assert fake.stats.revoke_calls == 1
        assert fake.stats.token_calls == 2
        assert fake.stats.refresh_calls == 0
        assert await client.auth.revoke() is True
        assert await client.auth.revoke() is False  # nothing left to revoke


# --- cancellation ------------------------------------------------------------------------------


async def test_cancelled_waiters_do_not_cancel_the_token_call() -> None:
    async with FakeAPIMW(token_latency=0.2) as fake, client_for(fake) as client:
        waiters = [asyncio.create_task(client.auth.me()) for _ in range(100)]
        await fake.wait_until(lambda s: s.token_calls == 1)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        token = await client.tokens.get_token()
        assert fake.is_access_token_valid(token.access_token)
        assert fake.stats.token_calls == 1
        assert client.tokens.stats.tokens_obtained == 1


# --- sessions, middleware, security ------------------------------------------------------------


async def test_user_session_is_used_and_never_closed(fake: FakeAPIMW) -> None:
    async with aiohttp.ClientSession() as session:
        async with client_for(fake, session=session) as client:
            await client.auth.me()
        assert not session.closed
        async with session.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == 401  # and no header leaked into the session defaults


async def test_middleware_authenticates_a_user_session_and_replays_once(fake: FakeAPIMW) -> None:
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    middleware = BearerAuthMiddleware(tm)
    async with tm, aiohttp.ClientSession(middlewares=(middleware,)) as session:
        async with session.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == 200
        fake.expire_access_tokens()
        async with session.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == 200
            assert (await resp.json())["success"] is True
        assert fake.stats.unauthorized == 1
        assert fake.stats.refresh_calls == 1
        # Another origin (localhost vs 127.0.0.1) gets no bearer.
        other = f"http://localhost:{fake.port}/v1/auth/me"
        async with session.get(other) as resp:
            assert resp.status == 401
        assert fake.stats.token_calls_with_bearer == 0
        assert fake.stats.unauthorized == 2


async def test_manager_sharing_the_middleware_session_does_not_recurse(fake: FakeAPIMW) -> None:
    holder: dict[str, TokenManager] = {}

    async def late(req: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        return await BearerAuthMiddleware(holder["tm"])(req, handler)

    async with aiohttp.ClientSession(middlewares=(late,)) as session:
        tm = TokenManager(fake.credentials, base_url=fake.base_url, session=session)
        holder["tm"] = tm
        async with session.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == 200
        await tm.aclose()
        assert not session.closed
    assert fake.stats.token_calls == 1
    assert fake.stats.token_calls_with_bearer == 0


async def test_session_with_a_default_authorization_header_is_refused() -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer x"}) as session:
        with pytest.raises(ConfigurationError, match="Authorization"):
            TokenManager(
                Credentials("ak_1234567890", "sk_1234567890"),
                base_url="https://api.apimw.com/v1",
                session=session,
            )


def test_plain_http_is_refused_unless_loopback_or_opted_in() -> None:
    creds = Credentials("ak_1234567890", "sk_1234567890")
    with pytest.raises(ConfigurationError, match="HTTPS"):
        TokenManager(creds, base_url="http://api.apimw.com/v1")
    with pytest.raises(ConfigurationError):
        Client(creds, base_url="http://10.1.2.3/v1")
    TokenManager(creds, base_url="http://127.0.0.1:9/v1")
    TokenManager(creds, base_url="http://[::1]:9/v1")
    TokenManager(creds, base_url="http://api.internal/v1", allow_insecure_http=True)


def test_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials("ak_1234567890", "sk_1234567890")
    assert TokenManager(creds).base_url == "https://api.apimw.com/v1"
    monkeypatch.setenv("APIMW_BASE_URL", "https://sandbox.apimw.test/v1/")
    assert TokenManager(creds).base_url == "https://sandbox.apimw.test/v1"
    assert Client(creds).base_url == "https://sandbox.apimw.test/v1"
    monkeypatch.setenv("APIMW_API_KEY", "ak_env_1234567890")
    monkeypatch.setenv("APIMW_API_SECRET", "sk_env_secret")
    assert Client.from_env().tokens.credentials.api_key == "ak_env_1234567890"


# --- event loops and threads -------------------------------------------------------------------


def test_one_client_across_repeated_asyncio_run() -> None:
    with ServerThread() as fake:
        client = Client(fake.credentials, base_url=fake.base_url)

        async def use() -> str:
            return (await client.auth.me()).user.id

        ids = {asyncio.run(use()) for _ in range(3)}
        asyncio.run(client.aclose())
        assert len(ids) == 1
        # The token is a plain value shared across loops: obtained once.
        assert fake.stats.token_calls == 1


def test_threads_with_their_own_loops_never_spend_a_refresh_token_twice() -> None:
    with ServerThread(token_lifetime=0.5, reuse_detection=True) as fake:
        tm = TokenManager(fake.credentials, base_url=fake.base_url)
        errors: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                stop = time.monotonic() + 2.0
                async with aiohttp.ClientSession() as session:
                    while time.monotonic() < stop:
                        token = await tm.get_token()
                        headers = {"Authorization": token.authorization}
                        async with session.get(f"{fake.base_url}/auth/me", headers=headers) as r:
                            if r.status != 200:
                                await tm.invalidate(token)

            try:
                asyncio.run(main())
            except BaseException as exc:  # pragma: no cover - reported by the assertion
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert fake.stats.refresh_reuse == 0
        assert fake.stats.families_revoked == 0
        assert fake.stats.refresh_calls + fake.stats.token_calls >= 2


# --- secrets -----------------------------------------------------------------------------------


async def test_no_secret_in_logs_reprs_or_errors(
    timed_fake: FakeAPIMW, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = timed_fake
    seen: list[Token] = []
    texts: list[str] = []
    async with client_for(fake, clock=clock, on_token=seen.append) as client:
        fake.faults.add("token", "status", status=500)
        fake.faults.add("refresh", "drop", after=True)
        for _ in range(3):
            await drive(clock, client.auth.me())
            clock.advance(3600)
        fake.expire_access_tokens()
        await drive(clock, client.auth.me())
        fake.faults.add("me", "status", status=401, code="INVALID_TOKEN", times=2)
        try:
            await client.auth.me()
        except APIMWError as exc:
            texts += [str(exc), repr(exc)]
        texts += [repr(client), repr(client.tokens), repr(seen), str(seen[-1])]
    bad = Credentials(fake.credentials.api_key, "sk_wrong_but_secret_value")
    async with Client(bad, base_url=fake.base_url) as client:
        try:
            await client.auth.me()
        except APIMWError as exc:
            texts += [str(exc), repr(exc), repr(bad)]
    assert len(seen) >= 4
    haystack = "\n".join(texts) + caplog.text
    secrets = {fake.credentials.api_secret, bad.api_secret}
    for token in seen:
        secrets.add(token.access_token)
        assert token.refresh_token is not None
        secrets.add(token.refresh_token)
    for secret in secrets:
        assert secret not in haystack
    assert seen[-1].fingerprint in caplog.text  # logs identify tokens by fingerprint


def test_parsed_urls_are_cached_but_bounded() -> None:
    from apimw_async import _client

    client = Client(Credentials("ak_1234567890", "sk_1234567890"), base_url="https://a.b/v1")
    assert client._url("/auth/me", False) is client._url("/auth/me", False)
    assert str(client._url("/m/a%2Fb", True)) == "https://a.b/v1/m/a%2Fb"
    for i in range(3 * _client._URL_CACHE_SIZE):
        client._url(f"/whatsapp/messages/wamid.{i}", True)
    assert len(client._urls) <= _client._URL_CACHE_SIZE


def add_401(fake: FakeAPIMW, code: str | None) -> None:
    if code is None:  # a gateway's bare 401, no envelope
        fake.faults.add(
            "me", "malformed", status=401, body=b"Unauthorized", content_type="text/plain"
        )
    else:
        fake.faults.add("me", status=401, code=code)


@pytest.mark.parametrize(
    ("code", "replayed"),
    [("EXPIRED_TOKEN", True), ("UNAUTHORIZED", True), (None, True), ("INVALID_CREDENTIALS", False)],
    ids=["token-code", "unknown-code", "bare-401", "other-code"],
)
async def test_client_and_middleware_replay_after_the_same_401s(
    fake: FakeAPIMW, code: str | None, replayed: bool
) -> None:
    # One rule (is_token_refusal) for both: a 401 refusing the token, or saying nothing else.
    tm = TokenManager(fake.credentials, base_url=fake.base_url)
    async with tm, aiohttp.ClientSession(middlewares=(BearerAuthMiddleware(tm),)) as session:
        add_401(fake, code)
        async with session.get(f"{fake.base_url}/auth/me") as resp:
            assert resp.status == (200 if replayed else 401)
    async with client_for(fake) as client:
        add_401(fake, code)
        if replayed:
            await client.auth.me()
        else:
            with pytest.raises(AuthenticationError):
                await client.auth.me()
    assert fake.stats.unauthorized == 2
    assert fake.stats.calls["me"] == (4 if replayed else 2)
