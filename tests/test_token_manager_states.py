"""The TokenManager's state machine, driven by a FakeClock and scripted token endpoints.

Each test names the lifecycle rule it checks (numbers as in the token-core issue).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from apimw_async import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    FakeClock,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    MalformedResponseError,
    RateLimitError,
    RefreshPolicy,
    ServerError,
    TokenManager,
    TokenUnavailableError,
)

from .scripted import ScriptedAuth, scripted_manager, settle

Manager = Callable[..., tuple[TokenManager, ScriptedAuth]]


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when a test advances it: these tests check what happens (and
    what does not) at each instant, with no fake server involved."""
    return FakeClock()


@pytest.fixture
async def manager(clock: FakeClock) -> AsyncIterator[Manager]:
    """``manager(**options)``: a TokenManager on ``clock`` with a scripted auth API; every one
    made is closed after the test, whether it passed or failed."""
    made: list[TokenManager] = []

    def make(**options: Any) -> tuple[TokenManager, ScriptedAuth]:
        tm, auth = scripted_manager(clock, **options)
        made.append(tm)
        return tm, auth

    yield make
    for tm in made:
        await tm.aclose()


# --- 1. single flight ------------------------------------------------------------------------


async def test_cold_burst_makes_exactly_one_call(clock: FakeClock, manager: Manager) -> None:
    tm, auth = manager()
    waiters = [asyncio.create_task(tm.get_token()) for _ in range(1000)]
    call = await auth.next_call()
    await settle()
    assert auth.kinds() == ["token"]
    call.succeed("at1")
    tokens = await asyncio.gather(*waiters)
    assert {t.access_token for t in tokens} == {"at1"}
    assert tm.stats.token_calls == 1
    assert tm.stats.refresh_calls == 0


async def test_expired_cache_burst_makes_exactly_one_refresh(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=100)
    await first
    clock.advance(100)  # past expiry
    waiters = [asyncio.create_task(tm.get_token()) for _ in range(500)]
    call = await auth.next_call()
    await settle()
    assert (call.kind, call.arg) == ("refresh", "rt_at1")
    assert len(auth.calls) == 2
    call.succeed("at2")
    assert {t.access_token for t in await asyncio.gather(*waiters)} == {"at2"}


# --- 2. stale-while-refresh ------------------------------------------------------------------


async def test_fresh_token_is_returned_without_any_call(clock: FakeClock, manager: Manager) -> None:
    tm, auth = manager()
    auth.answer_automatically(expires_in=100)
    token = await tm.get_token()
    for _ in range(100):
        clock.advance(0.5)  # 50 s: well before the refresh window
        assert await tm.get_token() is token
    assert len(auth.calls) == 1


async def test_stale_token_is_served_while_one_background_refresh_runs(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager(rng=random.Random(1))
    start = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=100)
    old = await start
    clock.advance(old.refresh_at - clock.monotonic())  # enter the refresh window
    # Many callers in the window: each returns at once with the old token (one loop step).
    callers = [asyncio.create_task(tm.get_token()) for _ in range(200)]
    await asyncio.sleep(0)
    assert all(c.done() for c in callers)
    assert {c.result().access_token for c in callers} == {"at1"}
    refresh = await auth.next_call()
    await settle()
    assert refresh.kind == "refresh"
    assert len(auth.calls) == 2  # one background refresh, not one per caller
    assert tm.stats.waits == 1  # only the very first, cold caller waited
    refresh.succeed("at2", expires_in=100)
    await settle()
    assert (await tm.get_token()).access_token == "at2"
    assert tm.stats.background_refreshes == 1


async def test_waits_tell_a_missing_token_from_a_refresh_that_came_too_late(
    clock: FakeClock,
) -> None:
    tm, auth = scripted_manager(clock)
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=100)
    token = await first
    stats = tm.stats
    assert (stats.waits_without_valid_token, stats.waits_with_valid_token) == (1, 0)
    clock.advance(token.refresh_at - clock.monotonic())
    assert await tm.get_token() is token  # starts the background refresh ...
    refresh = await auth.next_call()
    # ... which has not come back when the token passes its expiry margin (95 s of 100):
    # the server would still accept it, so this caller waits although a valid token is held.
    clock.advance(token.expires_at - clock.monotonic())
    late = asyncio.create_task(tm.get_token())
    await settle()
    assert not late.done()
    assert (stats.waits_without_valid_token, stats.waits_with_valid_token) == (1, 1)
    refresh.succeed("at2", expires_in=100)
    assert (await late).access_token == "at2"
    # Long after the server's expiry, nothing valid is held: an expected wait.
    clock.advance(500)
    after = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at3", expires_in=100)
    assert (await after).access_token == "at3"
    assert (stats.waits_without_valid_token, stats.waits_with_valid_token) == (2, 1)
    assert stats.waits == 3
    await tm.aclose()


@pytest.mark.parametrize(
    ("lifetime", "step", "lives"), [(2.0, 0.05, 25), (3600.0, 20.0, 10), (86400.0, 60.0, 3)]
)
async def test_one_call_per_lifetime_when_crossing_expiry_many_times(
    clock: FakeClock, manager: Manager, lifetime: float, step: float, lives: int
) -> None:
    tm, auth = manager(rng=random.Random(7))
    auth.answer_automatically(expires_in=lifetime)
    await tm.get_token()
    for _ in range(round(lives * lifetime / step)):
        clock.advance(step)
        token = await tm.get_token()
        # Never an expired token, and never a wait after the first call.
        assert not token.is_expired(clock.monotonic())
        await settle()
    assert tm.stats.waits == 1
    # Each token is refreshed exactly once, when its refresh window opens (20–25 % of its
    # life before expiry, at most 300–375 s): one call per token issued.
    window_min = min(0.2 * lifetime, 300.0)
    window_max = window_min * 1.25
    refreshes = len(auth.calls) - 1
    assert lives * lifetime / (lifetime - window_min) - 1 <= refreshes
    assert refreshes <= lives * lifetime / (lifetime - window_max - step) + 1
    assert tm.stats.tokens_obtained == len(auth.calls)
    assert tm.stats.background_refreshes == refreshes


async def test_refresh_window_bounds_for_short_and_long_tokens() -> None:
    policy = RefreshPolicy()
    rng = random.Random(3)
    for _ in range(1000):
        refresh_at, expires_at = policy.deadlines(0.0, 2.0, rng)
        # 2-s token: refresh in the last 20–25 %, usable until 95 % of its life.
        assert 1.5 - 1e-9 <= refresh_at <= 1.6 + 1e-9
        assert expires_at == pytest.approx(1.9)
        refresh_at, expires_at = policy.deadlines(0.0, 86400.0, rng)
        # 24-h token: the window is capped at 5 minutes (plus jitter), margin 5 s.
        assert 86400 - 375 - 1e-6 <= refresh_at <= 86400 - 300 + 1e-6
        assert expires_at == pytest.approx(86395.0)


async def test_token_arriving_inside_its_window_does_not_cause_a_refresh_loop(
    clock: FakeClock,
    manager: Manager,
) -> None:
    # A server that keeps answering with tokens already inside the refresh window.
    tm, auth = manager(refresh_policy=RefreshPolicy(fraction=0.5))
    first = asyncio.create_task(tm.get_token())
    call = await auth.next_call()
    clock.advance(3.0)  # a slow answer: 3 s of a 4-s lifetime gone on the way
    call.succeed("at1", expires_in=4.0)
    await first
    for _ in range(50):
        await tm.get_token()
        await settle()
    assert len(auth.calls) == 1  # no background refresh storm


# --- 3. single-use refresh tokens --------------------------------------------------------------


async def test_rotated_refresh_token_is_used_and_the_old_one_never_again(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    auth.answer_automatically(expires_in=10)
    for _ in range(6):
        await tm.get_token()
        clock.advance(10)
    await tm.get_token()
    sent = [c.arg for c in auth.calls if c.kind == "refresh"]
    assert sent == ["rt_at1", "rt_at2", "rt_at3", "rt_at4", "rt_at5", "rt_at6"]


@pytest.mark.parametrize(
    "lost",
    [
        APITimeoutError("timed out"),
        APIConnectionError("reset after sending", sent=True),
        ServerError("HTTP 502", status=502),
        MalformedResponseError("not the envelope", status=200),
    ],
    ids=["timeout", "reset", "5xx", "malformed"],
)
async def test_refresh_with_unknown_outcome_is_never_resent(
    clock: FakeClock, manager: Manager, lost: Exception
) -> None:
    tm, auth = manager()
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=10)
    await first
    clock.advance(10)
    waiter = asyncio.create_task(tm.get_token())
    refresh = await auth.next_call()
    assert (refresh.kind, refresh.arg) == ("refresh", "rt_at1")
    refresh.fail(lost)
    if isinstance(lost, MalformedResponseError):
        with pytest.raises(MalformedResponseError):
            await waiter
        waiter = asyncio.create_task(tm.get_token())
    else:
        await clock.wait_for_sleepers(1)
        clock.advance_to_next_deadline()
    retry = await auth.next_call()
    assert retry.kind == "token"  # credentials, not the spent refresh token
    retry.succeed("at2")
    assert (await waiter).access_token == "at2"
    assert tm.stats.fallbacks == 1
    assert [c.arg for c in auth.calls if c.kind == "refresh"] == ["rt_at1"]


@pytest.mark.parametrize(
    "rejected",
    [
        RateLimitError("HTTP 429", retry_after=2),
        APIConnectionError("connection refused", sent=False),
    ],
    ids=["429", "refused"],
)
async def test_refresh_the_server_never_saw_is_sent_again(
    clock: FakeClock, manager: Manager, rejected: Exception
) -> None:
    tm, auth = manager()
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=10)
    await first
    clock.advance(10)
    waiter = asyncio.create_task(tm.get_token())
    (await auth.next_call()).fail(rejected)
    await clock.wait_for_sleepers(1)
    clock.advance_to_next_deadline()
    retry = await auth.next_call()
    assert (retry.kind, retry.arg) == ("refresh", "rt_at1")
    retry.succeed("at2")
    assert (await waiter).access_token == "at2"
    assert tm.stats.fallbacks == 0


async def test_invalid_refresh_token_falls_back_to_credentials_at_once(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=10)
    await first
    clock.advance(10)
    waiter = asyncio.create_task(tm.get_token())
    (await auth.next_call()).fail(
        InvalidRefreshTokenError("refused", status=401, code="INVALID_REFRESH_TOKEN")
    )
    again = await auth.next_call()
    assert again.kind == "token"
    assert clock.sleepers == 0  # no backoff in between
    again.succeed("at2")
    assert (await waiter).access_token == "at2"
    assert tm.stats.fallbacks == 1
    assert tm.stats.failures == 1


async def test_lapsed_refresh_token_is_not_sent(clock: FakeClock, manager: Manager) -> None:
    tm, auth = manager()
    auth.answer_automatically(expires_in=3600)
    await tm.get_token()
    clock.advance(30 * 24 * 3600)  # the refresh token's 30 days are over
    await tm.get_token()
    assert auth.kinds() == ["token", "token"]


async def test_refresh_token_life_is_tracked_on_the_wall_clock(
    clock: FakeClock, manager: Manager
) -> None:
    # The machine slept: the monotonic clock barely moved, the wall clock moved 31 days.
    tm, auth = manager()
    auth.answer_automatically(expires_in=60)
    await tm.get_token()
    clock.set_wall(clock.time() + 31 * 24 * 3600)
    clock.advance(60)
    await tm.get_token()
    assert auth.kinds() == ["token", "token"]


# --- 4. cancellation ---------------------------------------------------------------------------


async def test_cancelling_the_caller_that_started_the_refresh_keeps_the_rotation(
    clock: FakeClock,
    manager: Manager,
) -> None:
    tm, auth = manager()
    starter = asyncio.create_task(tm.get_token())
    call = await auth.next_call()
    others = [asyncio.create_task(tm.get_token()) for _ in range(10)]
    await settle()
    starter.cancel()
    for task in others:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    await settle()
    call.succeed("at1", expires_in=10, refresh_token="rt_rotated")
    await settle()
    assert tm.token is not None
    assert tm.token.access_token == "at1"
    clock.advance(10)
    waiter = asyncio.create_task(tm.get_token())
    refresh = await auth.next_call()
    assert (refresh.kind, refresh.arg) == ("refresh", "rt_rotated")
    refresh.succeed("at2")
    assert (await waiter).access_token == "at2"


async def test_a_caller_timeout_does_not_cancel_the_acquisition(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    impatient = asyncio.create_task(asyncio.wait_for(tm.get_token(), timeout=0.001))
    call = await auth.next_call()
    with pytest.raises(asyncio.TimeoutError):
        await impatient
    call.succeed("at1")
    assert (await tm.get_token()).access_token == "at1"
    assert len(auth.calls) == 1


async def test_aclose_cancels_the_acquisition_and_waiters_get_a_typed_error(
    clock: FakeClock,
    manager: Manager,
) -> None:
    tm, auth = manager()
    waiter = asyncio.create_task(tm.get_token())
    await auth.next_call()
    await tm.aclose()
    with pytest.raises(ClientClosedError):
        await waiter
    with pytest.raises(ClientClosedError):
        await tm.get_token()


async def test_failed_background_refresh_is_invisible_and_retried_later(
    clock: FakeClock, manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    tm, auth = manager(deadline=5.0, rng=random.Random(5))
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=100)
    token = await first
    clock.advance(token.refresh_at - clock.monotonic())
    assert await tm.get_token() is token
    # The background refresh fails with a refused refresh token and then 5xx until its deadline.
    (await auth.next_call()).fail(InvalidRefreshTokenError("no", status=401))
    calls = 1
    while True:
        call = await auth.next_call()
        calls += 1
        call.fail(ServerError("HTTP 503", status=503))
        await settle()
        if clock.sleepers == 0:
            break
        clock.advance_to_next_deadline()
        assert await tm.get_token() is token  # callers never see the failure
    assert calls >= 3
    assert "background token refresh failed" in caplog.text
    assert clock.monotonic() < token.expires_at
    # The next background attempt starts only after a pause, then succeeds.
    n = len(auth.calls)
    assert await tm.get_token() is token
    await settle()
    assert len(auth.calls) == n
    clock.advance(10)
    assert await tm.get_token() is token
    (await auth.next_call()).succeed("at2")
    await settle()
    assert (await tm.get_token()).access_token == "at2"


# --- 5. transient failures, deadlines, permanent failures --------------------------------------


async def test_transient_failures_back_off_with_full_jitter_then_succeed(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager(rng=random.Random(11))
    waiter = asyncio.create_task(tm.get_token())
    waits = []
    for _ in range(3):
        (await auth.next_call()).fail(ServerError("HTTP 500", status=500))
        await clock.wait_for_sleepers(1)
        waits.append(clock.advance_to_next_deadline())
    (await auth.next_call()).succeed("at1")
    assert (await waiter).access_token == "at1"
    # Full jitter: each wait is drawn from [0, base * 2**attempt].
    for attempt, wait in enumerate(waits):
        assert 0 <= wait <= 0.25 * 2**attempt
    assert tm.stats.failures == 3


async def test_persistent_failure_gives_a_typed_error_within_the_deadline(
    clock: FakeClock,
    manager: Manager,
) -> None:
    tm, auth = manager(deadline=10.0)
    start = clock.monotonic()
    waiters = [asyncio.create_task(tm.get_token()) for _ in range(20)]
    while True:
        (await auth.next_call()).fail(APIConnectionError("refused", sent=False))
        await settle()
        if all(w.done() for w in waiters):
            break
        await clock.wait_for_sleepers(1)
        clock.advance_to_next_deadline()
    assert clock.monotonic() - start <= 10.0
    for waiter in waiters:
        with pytest.raises(TokenUnavailableError) as info:
            await waiter
        assert isinstance(info.value.__cause__, APIConnectionError)


async def test_retry_after_is_honoured_as_one_shared_cool_down(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    waiter = asyncio.create_task(tm.get_token())
    (await auth.next_call()).fail(RateLimitError("HTTP 429", retry_after=3))
    await clock.wait_for_sleepers(1)
    waited = clock.advance_to_next_deadline()
    assert 3.0 <= waited <= 3.3
    (await auth.next_call()).succeed("at1", expires_in=5)
    await waiter
    assert len(auth.calls) == 2


async def test_retry_after_beyond_the_deadline_fails_fast_with_retry_after(
    clock: FakeClock,
    manager: Manager,
) -> None:
    tm, auth = manager(deadline=10.0)
    waiter = asyncio.create_task(tm.get_token())
    (await auth.next_call()).fail(RateLimitError("HTTP 429", status=429, retry_after=60))
    with pytest.raises(TokenUnavailableError) as info:
        await waiter
    assert info.value.status == 429
    assert info.value.retry_after == 60
    # A new caller during the cool-down does not hit the endpoint again.
    with pytest.raises(TokenUnavailableError):
        await tm.get_token()
    assert len(auth.calls) == 1


async def test_invalid_credentials_raise_at_once_without_a_retry_storm(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager(permanent_failure_cooldown=10.0)
    waiters = [asyncio.create_task(tm.get_token()) for _ in range(50)]
    (await auth.next_call()).fail(
        InvalidCredentialsError("bad", status=401, code="INVALID_CREDENTIALS")
    )
    for waiter in waiters:
        with pytest.raises(InvalidCredentialsError):
            await waiter
    for _ in range(100):
        with pytest.raises(InvalidCredentialsError):
            await tm.get_token()
    assert len(auth.calls) == 1
    assert clock.sleepers == 0
    clock.advance(10.0)
    waiter = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1")
    assert (await waiter).access_token == "at1"


# --- 6. time -----------------------------------------------------------------------------------


async def test_lifetime_counts_from_when_the_request_was_sent(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    sent = clock.monotonic()
    waiter = asyncio.create_task(tm.get_token())
    call = await auth.next_call()
    clock.advance(7.0)  # slow network
    call.succeed("at1", expires_in=100)
    token = await waiter
    assert token.obtained_at == sent
    assert token.expires_at == pytest.approx(sent + 95.0)


# --- invalidate, hooks -------------------------------------------------------------------------


async def test_invalidate_drops_only_the_current_token(clock: FakeClock, manager: Manager) -> None:
    tm, auth = manager()
    auth.answer_automatically(expires_in=100)
    first = await tm.get_token()
    assert await tm.invalidate(first)
    second = await tm.get_token()
    assert auth.kinds() == ["token", "refresh"]  # the refresh token survives a 401
    # A late 401 for the first token must not drop the second.
    assert not await tm.invalidate(first)
    assert await tm.get_token() is second
    assert len(auth.calls) == 2
    assert tm.stats.invalidations == 1


async def test_sync_and_async_hooks_see_each_token_and_their_failures_are_isolated(
    clock: FakeClock, manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def hook(token):  # type: ignore[no-untyped-def]
        seen.append(token.access_token)
        done.set()
        raise RuntimeError("hook broke")

    tm, auth = manager(on_token=hook)
    auth.answer_automatically()
    token = await tm.get_token()
    await done.wait()
    await settle()
    assert seen == [token.access_token]
    assert "on_token hook failed" in caplog.text
    await tm.aclose()

    def sync_hook(token):  # type: ignore[no-untyped-def]
        raise ValueError("sync hook broke")

    tm, auth = manager(on_token=sync_hook)
    auth.answer_automatically()
    assert (await tm.get_token()).access_token == "at1"


async def test_revoke_forgets_the_pair_and_calls_the_server(
    clock: FakeClock, manager: Manager
) -> None:
    tm, auth = manager()
    auth.answer_automatically()
    token = await tm.get_token()
    assert await tm.revoke()
    assert auth.calls[-1].kind == "revoke"
    assert auth.calls[-1].arg == token.access_token
    assert tm.token is None
    await tm.get_token()
    assert auth.kinds() == ["token", "revoke", "token"]  # no refresh with a revoked pair


async def test_logs_never_carry_secrets(
    clock: FakeClock, manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="apimw_async")
    tm, auth = manager()
    auth.answer_automatically(expires_in=10)
    for _ in range(5):
        token = await tm.get_token()
        clock.advance(10)
    await tm.invalidate(token)
    await tm.get_token()
    text = caplog.text + repr(tm) + repr(token) + str(token)
    assert caplog.records
    for call in auth.calls:
        assert call.arg is None or call.arg not in text
    for secret in ("at1", "at3", "rt_at2", "sk_test_scripted_secret_value"):
        assert secret not in text


async def test_no_background_refresh_during_a_server_advised_cool_down(
    clock: FakeClock, manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    tm, auth = manager()
    first = asyncio.create_task(tm.get_token())
    (await auth.next_call()).succeed("at1", expires_in=1000)
    token = await first
    clock.advance(token.refresh_at - clock.monotonic())
    assert await tm.get_token() is token
    (await auth.next_call()).fail(RateLimitError("HTTP 429", retry_after=60))
    await settle()
    for _ in range(50):  # 50 s inside the 60-s cool-down, the token still valid
        clock.advance(1.0)
        assert await tm.get_token() is token
        await settle()
    assert len(auth.calls) == 2
    assert caplog.text.count("background token refresh failed") == 1
    clock.advance(11.0)
    assert await tm.get_token() is token
    (await auth.next_call()).succeed("at2")
    await settle()
    assert (await tm.get_token()).access_token == "at2"
