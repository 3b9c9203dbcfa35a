"""Bad inputs get a clear typed error, never a bare ValueError/TypeError, a crash per request or
a hang: tokens a header cannot carry, garbage in the Redis hash, NaN and strings where seconds
go, non-lists where lists go; and what Redis holds is encrypted bound to its key, or said to
be plain."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apimw_async import (
    APIMWError,
    Client,
    ConfigurationError,
    Credentials,
    FakeClock,
    MalformedResponseError,
    RefreshPolicy,
    RetryPolicy,
    TokenManager,
    TokenUnavailableError,
    ValidationError,
)
from apimw_async.stores import StoredToken
from apimw_async.testing import FakeAPIMW

from .conftest import drive
from .raw_server import CREDENTIALS, RawServer, token_answer

BASE = "https://api.apimw.com/v1"
CREDS = Credentials("ak_test_bad_inputs_01", "sk_test_bad_inputs_secret")

# --- tokens a header cannot carry -------------------------------------------------------------


@pytest.mark.parametrize(
    "access_token",
    ["at_good\r\nX-Injected: 1", "at_good\nnext", "at with space", "at_é_non_ascii", "at\x00nul"],
    ids=["crlf", "lf", "space", "non-ascii", "nul"],
)
async def test_an_access_token_a_header_cannot_carry_is_a_malformed_answer(
    access_token: str,
) -> None:
    async with RawServer() as server:
        server.answers["/v1/auth/token"] = token_answer(access_token)
        clock = FakeClock()
        async with Client(CREDENTIALS, base_url=server.base_url, clock=clock) as client:
            [error] = await drive(clock, client.auth.me())
        # Typed (retried as a malformed answer until the deadline), never a bare ValueError
        # from aiohttp on every request for the token's whole life.
        assert isinstance(error, (MalformedResponseError, TokenUnavailableError)), error
        if isinstance(error, TokenUnavailableError):
            assert isinstance(error.__cause__, MalformedResponseError)
        assert not [path for path, _ in server.requests if path.endswith("/me")]


def test_a_stored_pair_with_such_a_token_is_unreadable() -> None:
    pair = StoredToken("at\r\nX: 1", "Bearer", 60.0, None, time.time(), time.time(), 1)
    with pytest.raises(MalformedResponseError):
        StoredToken.from_json(pair.to_json())
    nan = StoredToken("at_ok", "Bearer", math.nan, None, time.time(), time.time(), 1)
    with pytest.raises(MalformedResponseError):
        StoredToken.from_json(nan.to_json())


# --- seconds and lists ------------------------------------------------------------------------

BAD_SECONDS = [math.nan, math.inf, -1.0, 0, "5", None, True]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (name, value)
        for name in ("deadline", "request_timeout", "lease_ttl")
        for value in BAD_SECONDS
        if not (name == "lease_ttl" and value is None)  # None: the default lease
    ],
    ids=repr,
)
def test_token_manager_refuses_bad_seconds(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=name):
        TokenManager(CREDS, base_url=BASE, **{name: value})


@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_client_refuses_a_bad_timeout(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        Client(CREDS, base_url=BASE, timeout=value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RefreshPolicy(max_window=math.nan),
        lambda: RefreshPolicy(expiry_margin=math.nan),
        lambda: RefreshPolicy(jitter="0.1"),
        lambda: RetryPolicy(max_wait=math.nan),
        lambda: RetryPolicy(backoff_base=-1),
        lambda: RetryPolicy(max_attempts="3"),
        lambda: RetryPolicy(max_attempts=0),
        lambda: TokenManager(CREDS, base_url=BASE, permanent_failure_cooldown=math.nan),
    ],
    ids=[
        "max_window",
        "expiry_margin",
        "jitter",
        "max_wait",
        "backoff_base",
        "max_attempts-str",
        "max_attempts-0",
        "cooldown",
    ],
)
def test_policies_refuse_bad_numbers(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


async def test_non_lists_where_lists_go_are_validation_errors(fake: FakeAPIMW) -> None:
    for validate in (True, False):
        async with Client(fake.credentials, base_url=fake.base_url, validate=validate) as client:
            with pytest.raises(ValidationError) as caught:
                await client.whatsapp.send_template(
                    "+1234567890",
                    "order_confirmation",
                    "en",
                    components=5,  # type: ignore[arg-type]
                )
            assert caught.value.field == "components"
            with pytest.raises(ValidationError) as caught:
                await client.webhooks.register(
                    "https://example.com/hook",
                    None,  # type: ignore[arg-type]
                )
            assert caught.value.field == "events"
    assert fake.stats.messages_sent == 0
    assert fake.stats.webhooks_registered == 0


# --- garbage in Redis -------------------------------------------------------------------------


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[Any]:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    yield client
    client.close()


GARBAGE: dict[str, dict[str, bytes]] = {
    "both garbage": {"v": b"garbage", "d": b"\xff\xfe not json"},
    "version only": {"v": b"3"},
    "value only": {"d": b'{"format": 1}'},
    "garbage version": {"v": b"x1", "d": b"{}"},
    "wrong field types": {
        "v": b"1",
        "d": b'{"format":1,"access_token":5,"token_type":"Bearer","expires_in":"x",'
        b'"refresh_token":null,"issued_at":1,"refresh_issued_at":1,"version":1}',
    },
}


@pytest.mark.parametrize("garbage", GARBAGE, ids=str)
async def test_garbage_in_the_redis_hash_is_repaired_not_raised(
    garbage: str, redis_url: str, redis_prefix: str, raw_redis: Any, fake: FakeAPIMW
) -> None:
    from apimw_async.stores.redis import RedisTokenStore

    async with (
        RedisTokenStore.from_url(redis_url, prefix=redis_prefix) as store,
        TokenManager(fake.credentials, base_url=fake.base_url, store=store) as a,
        TokenManager(fake.credentials, base_url=fake.base_url, store=store) as b,
    ):
        key = a._store_key
        raw_redis.hset(store.token_key(key), mapping=GARBAGE[garbage])
        # A waiter reading the version meets the garbage too: it returns, typed or not at all.
        await store.wait_for_update(key, 1, 0.2)
        token = await a.get_token()  # no ValueError: the entry was discarded and replaced
        assert (await b.get_token()).access_token == token.access_token  # shared again
        assert fake.stats.token_calls == 1
        stored = await store.load(key)
        assert stored is not None
        assert stored.access_token == token.access_token


async def test_unencrypted_pairs_are_mentioned_once_at_info(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from apimw_async.stores.redis import RedisTokenStore

    caplog.set_level(logging.INFO, logger="apimw_async")
    now = time.time()
    async with RedisTokenStore.from_url(redis_url, prefix=redis_prefix) as store:
        for version in (1, 2, 3):
            pair = StoredToken("at_x", "Bearer", 60.0, "rt_x", now, now, version)
            assert await store.save("k" * 32, pair, expected_version=version - 1)
    said = [r for r in caplog.records if "unencrypted" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.INFO
    assert "rt_x" not in said[0].getMessage()


async def test_an_encrypted_pair_moved_to_another_key_does_not_load(
    redis_url: str, redis_prefix: str, raw_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    from apimw_async.stores.redis import RedisTokenStore

    now = time.time()
    ours, theirs = "a" * 32, "b" * 32
    key = fernet.Fernet.generate_key()
    async with RedisTokenStore.from_url(redis_url, prefix=redis_prefix, encryption_key=key) as s:
        pair = StoredToken("at_theirs", "Bearer", 60.0, "rt_theirs", now, now, 1)
        assert await s.save(theirs, pair, expected_version=0)
        # Someone with write access to Redis copies their (encrypted) pair over to our key.
        raw_redis.hset(s.token_key(ours), mapping=raw_redis.hgetall(s.token_key(theirs)))
        caplog.set_level(logging.WARNING, logger="apimw_async")
        assert await s.load(ours) is None  # a store fault: discarded, not adopted
        assert raw_redis.exists(s.token_key(ours)) == 0
        loaded = await s.load(theirs)
        assert loaded is not None
        assert loaded.access_token == "at_theirs"
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert not any("unencrypted" in r.getMessage() for r in caplog.records)


def test_configuration_errors_are_apimw_errors() -> None:
    with pytest.raises(APIMWError):
        TokenManager(CREDS, base_url=BASE, deadline=math.nan)
