"""The client's one retry policy, the rate-limit headers and the optional throttle.

Pure decisions (``_retry``) are tested as truth tables; the client's behaviour against the fake
server on loopback, with every wait on a FakeClock.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from multidict import CIMultiDict

from apimw_async import (
    APIConnectionError,
    APITimeoutError,
    Client,
    ConfigurationError,
    Credentials,
    FakeClock,
    InvalidPhoneNumberError,
    MalformedResponseError,
    RateLimitError,
    RateLimitInfo,
    RetryPolicy,
    ServerError,
    Throttle,
    TokenManager,
)
from apimw_async._envelope import parse_response
from apimw_async._errors import APIStatusError, BadRequestError
from apimw_async._retry import Outcome, advised_wait, is_idempotent, may_retry, outcome_of
from apimw_async.testing import FakeAPIMW

from .client_helpers import MaxRng, client_for, free_port, jittered
from .conftest import drive

NOW = 1_767_225_600.0  # FakeClock's default wall time
CREDENTIALS = Credentials("ak_test_retry0123456", "sk_test_retry_secret_value")


def error_429(headers: dict[str, str], error: dict[str, Any]) -> RateLimitError:
    body = json.dumps({"success": False, "error": {"code": "RATE_LIMIT_EXCEEDED", **error}})
    with pytest.raises(RateLimitError) as caught:
        parse_response(429, CIMultiDict(headers), body.encode())
    return caught.value


# --- which failures may be repeated ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "outcome", "post_retried", "get_retried"),
    [
        (RateLimitError("429"), Outcome.NOT_ACTED, True, True),
        (APIConnectionError("refused", sent=False), Outcome.NOT_ACTED, True, True),
        (APITimeoutError("connect timeout", sent=False), Outcome.NOT_ACTED, True, True),
        (APIConnectionError("reset after sending"), Outcome.UNKNOWN, False, True),
        (APITimeoutError("read timeout"), Outcome.UNKNOWN, False, True),
        (ServerError("boom", status=500), Outcome.UNKNOWN, False, True),
        (ServerError("gateway", status=502), Outcome.UNKNOWN, False, True),
        (BadRequestError("bad", status=400), Outcome.FINAL, False, False),
        (InvalidPhoneNumberError("bad number", status=400), Outcome.FINAL, False, False),
        (APIStatusError("teapot", status=418), Outcome.FINAL, False, False),
        (MalformedResponseError("html"), Outcome.FINAL, False, False),
        (ValueError("not ours"), Outcome.FINAL, False, False),
    ],
)
def test_what_may_be_retried(
    error: BaseException, outcome: Outcome, post_retried: bool, get_retried: bool
) -> None:
    assert outcome_of(error) is outcome
    assert may_retry(error, idempotent=False) is post_retried
    assert may_retry(error, idempotent=True) is get_retried


@pytest.mark.parametrize(
    ("method", "idempotent"),
    [("GET", True), ("get", True), ("HEAD", True), ("OPTIONS", True), ("POST", False)],
)
def test_idempotent_methods(method: str, idempotent: bool) -> None:
    assert is_idempotent(method) is idempotent


# --- how long to wait after a 429: the order of the sources ----------------------------------


@pytest.mark.parametrize(
    ("headers", "error", "expected"),
    [
        # Retry-After header > error.retry_after > X-RateLimit-Reset - now > backoff
        ({"Retry-After": "7"}, {"retry_after": 3}, jittered(7)),
        ({"retry-after": "7"}, {"retry_after": 3}, jittered(7)),
        (
            {"Retry-After": "7", "X-RateLimit-Reset": str(int(NOW) + 20)},
            {"retry_after": 3},
            jittered(7),
        ),
        ({"X-RateLimit-Reset": str(int(NOW) + 20)}, {"retry_after": 3}, jittered(3)),
        ({"X-RateLimit-Reset": str(int(NOW) + 20)}, {"retry_after": "3"}, jittered(3)),
        ({"X-RateLimit-Reset": str(int(NOW) + 20)}, {}, jittered(20)),
        ({"x-ratelimit-reset": str(int(NOW) + 20)}, {}, jittered(20)),
        ({"X-RATELIMIT-RESET": str(int(NOW) + 20)}, {}, jittered(20)),
        # A reset too small to be an epoch time is seconds from the response.
        ({"X-RateLimit-Reset": "15"}, {}, jittered(15)),
        # Unusable sources fall through to the next one.
        ({"Retry-After": "soon"}, {"retry_after": 3}, jittered(3)),
        ({"Retry-After": "soon"}, {"retry_after": "later"}, 0.25),
        ({"X-RateLimit-Reset": str(int(NOW) - 5)}, {}, 0.25),
        ({"X-RateLimit-Reset": "tomorrow"}, {}, 0.25),
        ({}, {"retry_after": -1}, 0.0),  # the envelope parser clamps it to 0
        ({}, {}, 0.25),  # full jitter over [0, backoff_base]; MaxRng takes the top
        # Zero means "now".
        ({"Retry-After": "0"}, {"retry_after": 3}, 0.0),
        # Longer than max_retry_after: capped.
        ({"Retry-After": "500"}, {}, jittered(120)),
    ],
)
def test_429_wait_order(headers: dict[str, str], error: dict[str, Any], expected: float) -> None:
    exc = error_429(headers, error)
    policy = RetryPolicy(max_wait=1000)
    delay = policy.next_delay(exc, attempt=0, waited=0.0, idempotent=False, now=NOW, rng=MaxRng())
    assert delay == pytest.approx(expected)


def test_reset_is_used_only_for_a_429() -> None:
    reset = {"X-RateLimit-Reset": str(int(NOW) + 20)}
    with pytest.raises(ServerError) as caught:
        parse_response(503, reset, b"")
    assert advised_wait(caught.value, now=NOW) is None
    assert advised_wait(error_429(reset, {}), now=NOW) == pytest.approx(20)
    # Without a "now" the reset cannot be read (the token manager's existing behaviour).
    assert advised_wait(error_429(reset, {}), now=None) is None


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=5.0, max_attempts=10, max_wait=1000)
    exc = ServerError("boom", status=500)
    delays = [
        policy.next_delay(exc, attempt=n, waited=0.0, idempotent=True, rng=MaxRng())
        for n in range(5)
    ]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_next_delay_gives_up_on_attempts_wait_and_safety() -> None:
    policy = RetryPolicy(max_attempts=3, max_wait=10.0)
    limited = RateLimitError("429", retry_after=4)
    rng = MaxRng()
    assert policy.next_delay(limited, attempt=0, waited=0, idempotent=False, rng=rng) == 4.4
    assert policy.next_delay(limited, attempt=1, waited=4.4, idempotent=False, rng=rng) == 4.4
    # the third attempt was the last one
    assert policy.next_delay(limited, attempt=2, waited=8.8, idempotent=False, rng=rng) is None
    # total wait would exceed max_wait
    assert policy.next_delay(limited, attempt=1, waited=6.0, idempotent=False, rng=rng) is None
    # 5xx after a POST: never
    boom = ServerError("boom", status=500)
    assert policy.next_delay(boom, attempt=0, waited=0, idempotent=False, rng=rng) is None
    assert policy.next_delay(boom, attempt=0, waited=0, idempotent=True, rng=rng) == 0.25
    assert (
        RetryPolicy(max_attempts=1).next_delay(limited, attempt=0, waited=0, idempotent=True)
        is None
    )


# --- the client against the fake server ------------------------------------------------------


async def test_get_is_retried_on_5xx(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    timed_fake.faults.add("me", status=503, times=2)
    async with client_for(timed_fake, clock) as client:
        [me] = await drive(clock, client.auth.me())
        assert me.tenant.plan == "professional"
    assert timed_fake.stats.calls["me"] == 3


async def test_max_attempts_then_the_last_error(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    timed_fake.faults.add("me", status=502, times=10)
    policy = RetryPolicy(max_attempts=4, max_wait=1000)
    async with client_for(timed_fake, clock, retry_policy=policy) as client:
        [error] = await drive(clock, client.auth.me())
    assert isinstance(error, ServerError)
    assert error.status == 502
    assert timed_fake.stats.calls["me"] == 4


async def test_429_waits_retry_after_on_the_clock(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    timed_fake.faults.add("me", status=429, retry_after=7, retry_after_header=True)
    async with client_for(timed_fake, clock) as client:
        await client.tokens.get_token()
        task = asyncio.create_task(client.auth.me())
        await clock.wait_for_sleepers(1)
        assert timed_fake.stats.calls["me"] == 1
        assert clock.advance_to_next_deadline() == pytest.approx(jittered(7))
        me = await task
    assert me.user.id.startswith("usr_")
    assert timed_fake.stats.calls["me"] == 2


async def test_max_total_wait_then_rate_limit_error(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    timed_fake.faults.add("me", status=429, retry_after=4, times=10)
    policy = RetryPolicy(max_attempts=10, max_wait=10.0)
    async with client_for(timed_fake, clock, retry_policy=policy) as client:
        start = clock.monotonic()
        [error] = await drive(clock, client.auth.me())
        waited = clock.monotonic() - start
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 4
    # 4.4 + 4.4 waited; a third 4.4 would pass 10 s: three calls, then the error.
    assert waited == pytest.approx(8.8)
    assert timed_fake.stats.calls["me"] == 3


async def test_an_advised_wait_beyond_max_wait_fails_at_once(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    timed_fake.faults.add("me", status=429, retry_after=60)  # the docs' example
    async with client_for(timed_fake, clock) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.auth.me()
    assert caught.value.retry_after == 60
    assert timed_fake.stats.calls["me"] == 1
    assert clock.sleepers == 0


async def test_error_responses_update_rate_limit(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    async with client_for(timed_fake, clock, retry_policy=RetryPolicy(max_attempts=1)) as client:
        assert client.rate_limit is None
        await client.auth.me()
        ok = client.rate_limit
        assert ok is not None
        assert ok.limit == timed_fake.rate_limit
        assert ok.remaining is not None
        assert ok.remaining > 0
        assert ok.observed_at == clock.time()
        timed_fake.faults.add("me", status=429)
        with pytest.raises(RateLimitError):
            await client.auth.me()
        limited = client.rate_limit
        assert limited is not None
        assert limited.remaining == 0
        assert limited.reset == ok.reset


async def test_connection_refused_get_is_retried(clock: FakeClock) -> None:
    # The server stops listening (connections are refused at once) after the token was
    # obtained, and starts again on the same port while the client sleeps in its backoff.
    fake = FakeAPIMW(clock=clock, port=await free_port())
    await fake.start()
    try:
        async with client_for(fake, clock) as client:
            await client.tokens.get_token()
            await fake.close()
            task = asyncio.create_task(client.auth.me())
            await clock.wait_for_sleepers(1)
            assert fake.stats.calls.get("me", 0) == 0
            await fake.start()
            clock.advance_to_next_deadline()
            me = await task
            assert me.tenant.plan == "professional"
            assert fake.stats.calls["me"] == 1
    finally:
        await fake.close()


# --- throttle --------------------------------------------------------------------------------


async def test_throttle_is_a_sliding_window(clock: FakeClock) -> None:
    throttle = Throttle(3, clock=clock)
    assert [throttle.reserve() for _ in range(3)] == [0, 0, 0]
    assert throttle.reserve() == 60  # the fourth waits for the first to leave the window
    clock.advance(10)
    assert throttle.reserve() == 50
    clock.advance(100)
    assert throttle.reserve() == 0  # the window has emptied; nothing is owed


async def test_throttle_waiters_go_in_order_and_sleep_once(clock: FakeClock) -> None:
    throttle = Throttle(2, clock=clock, period=10)
    done: list[int] = []

    async def worker(n: int) -> None:
        await throttle.acquire()
        done.append(n)

    tasks = [asyncio.create_task(worker(n)) for n in range(5)]
    await clock.wait_for_sleepers(3)
    assert done == [0, 1]
    clock.advance(10)
    await asyncio.gather(*tasks[2:4])
    assert clock.sleepers == 1
    assert done == [0, 1, 2, 3]
    clock.advance(10)
    await asyncio.gather(*tasks)
    assert done == [0, 1, 2, 3, 4]


def test_throttle_arguments() -> None:
    clock = FakeClock()
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            Throttle(bad, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="period"):
        Throttle(1, clock=clock, period=0)
    for bad in (0, True, 2.5):
        with pytest.raises(ConfigurationError):
            Client(CREDENTIALS, max_requests_per_minute=bad)  # type: ignore[arg-type]


async def test_burst_of_workers_waits_instead_of_429(clock: FakeClock) -> None:
    async with (
        FakeAPIMW(clock=clock) as fake,
        client_for(fake, clock, max_requests_per_minute=5) as client,
    ):
        await client.tokens.get_token()
        tasks = [asyncio.create_task(client.auth.me()) for _ in range(12)]
        await clock.wait_for_sleepers(7)
        await fake.wait_until(lambda s: s.calls.get("me", 0) >= 5)
        await asyncio.gather(*tasks[:5])
        assert fake.stats.calls["me"] == 5
        clock.advance(60)
        await asyncio.gather(*tasks[5:10])
        await clock.wait_for_sleepers(2)
        assert fake.stats.calls["me"] == 10
        clock.advance(60)
        await asyncio.gather(*tasks)
        assert fake.stats.calls["me"] == 12
        assert client.throttle is not None
        assert client.throttle.limit == 5


# --- rate-limit headers ----------------------------------------------------------------------


def test_rate_limit_headers_are_read_case_insensitively() -> None:
    headers = CIMultiDict(
        {"x-ratelimit-limit": "300", "X-RATELIMIT-REMAINING": "7", "X-RateLimit-Reset": "1000"}
    )
    info = RateLimitInfo.from_headers(headers, now=940.0)
    assert (info.limit, info.remaining, info.reset, info.observed_at) == (300, 7, 1000.0, 940.0)
    assert info.present
    assert not RateLimitInfo.from_headers(CIMultiDict({"X-Other": "1"}), now=0).present


@pytest.mark.parametrize(
    ("reset", "now", "expected"),
    [
        (NOW + 30, NOW, 30.0),  # epoch seconds, as documented
        (NOW - 1, NOW, None),  # already past
        (45, NOW, 45.0),  # too small to be a date: seconds after the response
        (45, NOW + 50, None),
    ],
)
def test_reset_in(reset: float, now: float, expected: float | None) -> None:
    info = RateLimitInfo(limit=None, remaining=None, reset=reset, observed_at=NOW)
    assert info.reset_in(now) == expected


async def test_client_with_a_shared_token_manager_keeps_its_own_clock(clock: FakeClock) -> None:
    tokens = TokenManager(CREDENTIALS, base_url="https://api.apimw.test/v1")
    other = FakeClock()
    async with tokens, Client(token_manager=tokens, clock=other) as client:
        assert client.clock is other
        assert client.base_url == "https://api.apimw.test/v1"
    async with (
        TokenManager(CREDENTIALS, clock=clock) as tokens,
        Client(token_manager=tokens) as client,
    ):
        assert client.clock is clock
        assert client.retry_policy == RetryPolicy()
