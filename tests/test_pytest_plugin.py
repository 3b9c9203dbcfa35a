"""The opt-in pytest plugin, as a user would enable it: in a separate pytest run, strict mode."""

from __future__ import annotations

import pytest

from apimw_async import Client
from apimw_async.testing import FakeAPIMW, FakeClock

USER_TESTS = """
import pytest
from apimw_async import Client, InvalidCredentialsError

pytestmark = pytest.mark.asyncio  # strict mode: async tests are marked


async def test_client_against_the_fake(apimw_client, apimw_stats):
    me = await apimw_client.auth.me()
    assert me.user.id.startswith("usr_")
    assert apimw_stats.token_calls == 1


async def test_fault_injection(apimw_client, apimw_faults, apimw_stats):
    apimw_faults.add("token", "status", status=500)
    apimw_faults.add("token", "status", status=429, retry_after=0)
    await apimw_client.auth.me()
    assert apimw_stats.token_calls == 3


@pytest.mark.apimw_fake(api_secret="sk_other_secret_123")
async def test_marker_configures_the_fake(apimw_fake):
    assert apimw_fake.credentials.api_secret == "sk_other_secret_123"


async def test_expired_tokens_on_the_clock(apimw_client, apimw_fake, apimw_clock):
    await apimw_client.auth.me()
    apimw_clock.advance(3600)
    await apimw_client.auth.me()
    assert apimw_fake.stats.refresh_calls == 1


@pytest.mark.apimw_fake(token_lifetime=60, reuse_detection=True)
async def test_backoff_after_a_lost_refresh_needs_no_driving(apimw_client, apimw_fake, apimw_clock):
    await apimw_client.auth.me()
    apimw_fake.faults.add("refresh", "drop", after=True)
    apimw_fake.faults.add("token", "status", status=500)
    apimw_clock.advance(60)
    await apimw_client.auth.me()  # backoff sleeps on the clock: it jumps when the loop idles
    assert apimw_fake.stats.refresh_reuse == 0
    assert apimw_clock.auto_jumps >= 1


@pytest.mark.apimw_clock(auto_advance=False, stall_timeout=0.5)
async def test_a_manual_clock_nobody_advances_fails_fast(apimw_client, apimw_faults, apimw_clock):
    from apimw_async.testing import ClockStalledError
    apimw_faults.add("token", "status", status=500)
    with pytest.raises(ClockStalledError, match="moves only by hand"):
        await apimw_client.auth.me()


async def test_revoked_refresh_tokens(apimw_client, apimw_fake):
    await apimw_client.auth.me()
    apimw_fake.expire_access_tokens()
    apimw_fake.revoke_refresh_tokens()
    await apimw_client.auth.me()
    assert apimw_client.tokens.stats.fallbacks == 1


async def test_env_for_code_using_from_env(apimw_env):
    async with Client.from_env() as client:
        assert (await client.auth.me()).tenant.plan == "professional"


async def test_wrong_credentials_are_typed(apimw_fake):
    from apimw_async import Credentials
    bad = Credentials(apimw_fake.credentials.api_key, "sk_wrong_000000")
    async with Client(bad, base_url=apimw_fake.base_url) as client:
        with pytest.raises(InvalidCredentialsError):
            await client.auth.me()
"""


def test_plugin_in_a_user_suite_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "apimw_async.pytest_plugin",
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error",
        "-q",
    )
    result.assert_outcomes(passed=9)


def test_plugin_via_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["apimw_async.pytest_plugin"]')
    pytester.makepyfile(
        test_user="""
import pytest

@pytest.mark.asyncio
async def test_it(apimw_client):
    assert (await apimw_client.auth.me()).permissions
"""
    )
    result = pytester.runpytest_subprocess("-o", "asyncio_mode=strict", "-q")
    result.assert_outcomes(passed=1)


def test_plugin_is_not_auto_loaded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
def test_no_fixture(request):
    assert "apimw_fake" not in request.fixturenames
    import pytest
    with pytest.raises(pytest.FixtureLookupError):
        request.getfixturevalue("apimw_fake")
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


async def test_our_own_suite_uses_the_plugin_fixtures(
    apimw_client: Client, apimw_fake: FakeAPIMW, apimw_clock: FakeClock
) -> None:
    assert apimw_fake.clock is apimw_clock
    assert apimw_client.tokens.clock is apimw_clock
    await apimw_client.auth.me()
    assert apimw_fake.stats.token_calls == 1
