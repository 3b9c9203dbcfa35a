"""The fake server's fault plan over real HTTP: queued and random faults (``_fake_faults.py``)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from apimw_async.testing import (
    FakeAPIMW,
    FaultPlan,
)
from tests.fake_http import (
    CLIENT_ERRORS,
    call,
    get_token,
    me,
    refresh,
    token_pair,
)

# Every test runs on the FakeClock (``clock``) with a seeded server (``fake``), as conftest.py
# provides them.
pytestmark = [pytest.mark.usefixtures("clock"), pytest.mark.apimw_fake(seed=1234)]


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
    await token_pair(http, fake)  # one-shot: the next call is normal
    assert fake.faults.pending() == 0


async def test_429_fault(http: aiohttp.ClientSession, fake: FakeAPIMW) -> None:
    token = await get_token(http, fake)
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
    token = await get_token(http, fake)
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
        await token_pair(http, fake)
    assert fake.stats.token_calls == 1
    assert fake.stats.token_successes == 0
    assert fake.stats.faults_injected == 1
    await token_pair(http, fake)


async def test_drop_fault_on_get_is_retried_once_by_aiohttp(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    token = await get_token(http, fake)
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
    token = await get_token(http, fake)
    fake.faults.add("me", "delay", delay=30.0)
    with pytest.raises(asyncio.TimeoutError):
        await call(http, fake, "GET", "/auth/me", token=token, timeout=aiohttp.ClientTimeout(0.05))
    assert fake.stats.faults_injected == 1
    fake.faults.add("me", "delay", delay=0.01)
    assert (await me(http, fake, token)).status == 200  # a short delay answers normally


async def test_refresh_answer_lost_after_rotation(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    data = await token_pair(http, fake)
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
    await token_pair(http, fake)


async def test_after_faults_commit_other_operations(
    http: aiohttp.ClientSession, fake: FakeAPIMW
) -> None:
    fake.faults.add("token", "drop", after=True)
    with pytest.raises(CLIENT_ERRORS):
        await token_pair(http, fake)
    assert fake.stats.token_successes == 1  # a family was issued, nobody got it

    data = await token_pair(http, fake)
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
    data = await token_pair(http, fake)
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
        token = await get_token(http, fake)
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
    token = await get_token(http, fake)
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
        await token_pair(http, fake)
