"""The transport's pure parts: base URLs, the envelope parser, rate-limit headers, retry policy,
token grants; plus property tests that malformed input only ever raises the SDK's own errors."""

from __future__ import annotations

import email.utils
import json
import math
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from apimw_async import (
    AccessTokenError,
    APIConnectionError,
    APIMWError,
    ApiResponse,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    CurrentUser,
    ExpiredTokenError,
    InvalidCredentialsError,
    InvalidPhoneNumberError,
    InvalidRefreshTokenError,
    InvalidTokenError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RateLimitInfo,
    RetryPolicy,
    RevokedTokenError,
    ServerError,
    TokenUnavailableError,
)
from apimw_async._auth_api import TokenGrant
from apimw_async._envelope import parse_response, parse_retry_after
from apimw_async._retry import Outcome, is_transient, outcome_of
from apimw_async._send import _target, send
from apimw_async._urls import normalize_base_url

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def error_body(code: str | None, message: str = "msg", **extra: Any) -> bytes:
    error: dict[str, Any] = {"message": message, **extra}
    if code is not None:
        error["code"] = code
    return body({"success": False, "error": error})


def raises_from_parse(status: int, payload: bytes, **kwargs: Any) -> APIMWError:
    with pytest.raises(APIMWError) as info:
        parse_response(status, CIMultiDict(kwargs.pop("headers", {})), payload, **kwargs)
    return info.value


# --- normalize_base_url ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("https://api.apimw.com/v1", "https://api.apimw.com/v1"),
        ("https://api.apimw.com/v1/", "https://api.apimw.com/v1"),
        ("https://api.apimw.com/v1///", "https://api.apimw.com/v1"),
        ("https://api.apimw.com", "https://api.apimw.com"),
        ("https://api.apimw.com/", "https://api.apimw.com"),
        ("https://api.apimw.com:8443/v1", "https://api.apimw.com:8443/v1"),
        ("https://sandbox.apimw.test/v1", "https://sandbox.apimw.test/v1"),
    ],
)
def test_https_base_urls_are_accepted(given_url: str, expected: str) -> None:
    assert normalize_base_url(given_url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://api.apimw.com/v1",
        "http://api.apimw.com:80/v1",
        "http://10.0.0.5:8080/v1",
        "http://0.0.0.0:8080/v1",
        "http://localhost.evil.example/v1",
        "http://127.0.0.1.nip.io/v1",
        "http://192.168.1.10/v1",
    ],
)
def test_plain_http_refused_for_non_loopback(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        normalize_base_url(url)
    message = str(info.value)
    assert "HTTPS" in message
    assert "allow_insecure_http" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.2/v1",
        "http://[::1]:8080/v1",
        "http://localhost/v1",
        "http://LOCALHOST:9000/v1",
        "http://localhost.localdomain/v1",
        "http://api.localhost/v1",
        "http://a.b.localhost:1234/v1",
    ],
)
def test_plain_http_allowed_for_loopback(url: str) -> None:
    result = normalize_base_url(url + "/")
    assert result.startswith("http://")
    assert not result.endswith("/")


def test_plain_http_allowed_when_opted_in() -> None:
    url = "http://api.apimw.com/v1/"
    assert normalize_base_url(url, allow_insecure_http=True) == "http://api.apimw.com/v1"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2@api.apimw.com/v1",
        "https://user@api.apimw.com/v1",
        "https://:hunter2@api.apimw.com/v1",
        "http://localhost@evil.example/v1",
    ],
)
def test_credentials_in_url_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        normalize_base_url(url, allow_insecure_http=True)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.apimw.com/v1?tenant=1",
        "https://api.apimw.com/v1#frag",
        "https://api.apimw.com/v1/?a=b#c",
    ],
)
def test_query_or_fragment_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="query or fragment"):
        normalize_base_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "api.apimw.com/v1",
        "//api.apimw.com/v1",
        "/v1",
        "ftp://api.apimw.com/v1",
        "ws://localhost/v1",
        "file:///etc/passwd",
        "https://",
        "https:///v1",
        "http://[::1",
        "mailto:dev@example.com",
    ],
)
def test_garbage_base_urls_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        normalize_base_url(url)


def test_non_string_base_url_refused() -> None:
    with pytest.raises(ConfigurationError):
        normalize_base_url(None)  # type: ignore[arg-type]


# --- parse_response: success -----------------------------------------------------------------


def test_success_envelope() -> None:
    headers = CIMultiDict({"X-Request-Id": "req_1"})
    resp = parse_response(200, headers, body({"success": True, "data": {"a": [1, 2]}}))
    assert resp.status == 200
    assert resp.data == {"a": [1, 2]}
    assert resp.headers is headers


@pytest.mark.parametrize("status", [200, 201, 202, 299])
def test_success_envelope_any_2xx(status: int) -> None:
    assert parse_response(status, {}, body({"success": True, "data": 1})).data == 1


def test_success_envelope_without_data() -> None:
    assert parse_response(200, {}, body({"success": True})).data is None


@pytest.mark.parametrize(("status", "payload"), [(204, b""), (200, b""), (202, b"  \r\n\t")])
def test_empty_2xx_body_is_no_data(status: int, payload: bytes) -> None:
    resp = parse_response(status, {}, payload)
    assert resp.status == status
    assert resp.data is None


@pytest.mark.parametrize(
    "payload",
    [
        b"<html><body>OK</body></html>",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"OK",
        b'{"success": true, "data": ',
    ],
)
def test_non_json_2xx_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedResponseError, match="not JSON") as info:
        parse_response(200, {}, payload)
    assert info.value.status == 200


@pytest.mark.parametrize(
    "value",
    [[1, 2], "success", 42, None, True, {}, {"data": {"a": 1}}, {"Success": True, "data": 1}],
)
def test_json_that_is_not_the_envelope_is_malformed(value: Any) -> None:
    with pytest.raises(MalformedResponseError, match="envelope"):
        parse_response(200, {}, body(value))


@pytest.mark.parametrize("flag", ["true", 1, 0, None, "false", [], {}, 1.0])
def test_success_flag_must_be_a_bool(flag: Any) -> None:
    with pytest.raises(MalformedResponseError, match="not a boolean"):
        parse_response(200, {}, body({"success": flag, "data": {}}))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("INVALID_PHONE_NUMBER", InvalidPhoneNumberError),
        ("INVALID_CREDENTIALS", InvalidCredentialsError),
        ("RATE_LIMIT_EXCEEDED", RateLimitError),
        (None, BadRequestError),
        ("SOMETHING", BadRequestError),
    ],
)
def test_success_false_on_2xx_is_the_typed_error(code: str | None, expected: type) -> None:
    err = raises_from_parse(200, error_body(code, "nope"))
    assert type(err) is expected
    assert err.code == code
    assert err.status == 400  # a 2xx carrying an error envelope is treated as a 400
    assert "nope" in str(err)


def test_success_false_without_error_object() -> None:
    err = raises_from_parse(200, body({"success": False}))
    assert type(err) is BadRequestError
    assert err.code is None
    assert "no error message" in str(err)


# --- parse_response: errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (401, "INVALID_CREDENTIALS", "Invalid API Key or Secret", InvalidCredentialsError),
        (
            401,
            "INVALID_REFRESH_TOKEN",
            "Refresh token is invalid or expired",
            InvalidRefreshTokenError,
        ),
        (401, "EXPIRED_TOKEN", "Access token has expired", ExpiredTokenError),
        (401, "INVALID_TOKEN", "Access token is invalid", InvalidTokenError),
        (401, "REVOKED_TOKEN", "Access token has been revoked", RevokedTokenError),
        (
            400,
            "INVALID_PHONE_NUMBER",
            "The phone number format is invalid",
            InvalidPhoneNumberError,
        ),
        (
            429,
            "RATE_LIMIT_EXCEEDED",
            "Rate limit exceeded. Please retry after 60 seconds.",
            RateLimitError,
        ),
    ],
)
@pytest.mark.parametrize("bearer", [False, True])
def test_documented_error_envelopes(
    status: int, code: str, message: str, expected: type, bearer: bool
) -> None:
    headers = {"X-Request-Id": "req_42"}
    err = raises_from_parse(status, error_body(code, message), headers=headers, bearer=bearer)
    assert type(err) is expected
    assert isinstance(err, APIStatusError)
    assert err.status == status
    assert err.code == code
    assert message in str(err)
    assert str(status) in str(err)
    assert code in str(err)
    assert err.request_id == "req_42"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, BadRequestError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, APIStatusError),
        (422, BadRequestError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_undocumented_statuses_map_by_status(status: int, expected: type) -> None:
    err = raises_from_parse(status, error_body(None, "x"))
    assert isinstance(err, expected)
    assert err.status == status
    assert err.code is None


def test_bearer_401_with_empty_body_is_access_token_error() -> None:
    err = raises_from_parse(401, b"", bearer=True)
    assert type(err) is AccessTokenError
    assert err.code is None
    assert "no error message" in str(err)
    assert type(raises_from_parse(401, b"", bearer=False)) is AuthenticationError


def test_rate_limit_retry_after_from_body() -> None:
    err = raises_from_parse(429, error_body("RATE_LIMIT_EXCEEDED", retry_after=60))
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 60.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (60, 60.0),
        (1.5, 1.5),
        ("30", 30.0),
        (" 7 ", 7.0),
        (0, 0.0),
        (-5, 0.0),
        (True, None),
        ("soon", None),
        (None, None),
        ([60], None),
        ({"s": 60}, None),
    ],
)
def test_body_retry_after_values(raw: Any, expected: float | None) -> None:
    err = raises_from_parse(429, error_body("RATE_LIMIT_EXCEEDED", retry_after=raw))
    assert isinstance(err, RateLimitError)
    assert err.retry_after == expected


def test_body_retry_after_nan_is_ignored() -> None:
    # Python's json accepts the NaN literal; it must not become a wait.
    payload = b'{"success":false,"error":{"code":"RATE_LIMIT_EXCEEDED","retry_after":NaN}}'
    err = raises_from_parse(429, payload)
    assert isinstance(err, RateLimitError)
    assert err.retry_after is None


def test_retry_after_header_seconds() -> None:
    err = raises_from_parse(429, error_body(None), headers={"Retry-After": "12"})
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 12.0


def test_retry_after_header_wins_over_body() -> None:
    err = raises_from_parse(
        429, error_body("RATE_LIMIT_EXCEEDED", retry_after=60), headers={"retry-after": "5"}
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 5.0


def test_unreadable_retry_after_header_falls_back_to_body() -> None:
    err = raises_from_parse(
        429, error_body("RATE_LIMIT_EXCEEDED", retry_after=60), headers={"Retry-After": "soon"}
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 60.0


def test_retry_after_header_http_date() -> None:
    # An hour ahead; HTTP-dates have one-second resolution and are read against time.time().
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    err = raises_from_parse(
        429, error_body("RATE_LIMIT_EXCEEDED", retry_after=60), headers={"Retry-After": when}
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after is not None
    assert 3000 < err.retry_after <= 3600


def test_retry_after_header_http_date_in_the_past_is_zero() -> None:
    err = raises_from_parse(
        429,
        error_body(None, retry_after=60),
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 0.0


def test_retry_after_is_read_on_other_statuses_too() -> None:
    # 503 may carry Retry-After; the error type has no retry_after field, but nothing breaks.
    err = raises_from_parse(503, b"", headers={"Retry-After": "3"})
    assert type(err) is ServerError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("-4", 0.0),
        ("1.5", 1.5),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("", None),
        ("later", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Thu, 01 Jan 2026 00:01:40 GMT", 100.0),
        ("Thu, 01 Jan 2026 00:00:00 GMT", 0.0),
        ("Thursday, 01-Jan-26 00:00:30 GMT", 30.0),  # RFC 850 form
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert parse_retry_after({"Retry-After": value}, now=now) == expected


def test_parse_retry_after_absent() -> None:
    assert parse_retry_after({}, now=0.0) is None


@pytest.fixture
def local_time_five_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A POSIX TZ string needs no tz database; tzset() makes time/datetime pick it up.
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_five_hours_behind_utc")
def test_parse_retry_after_gmt_dates_do_not_depend_on_local_time() -> None:
    now = 1_767_225_600.0
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 00:00:45 GMT"}, now=now) == 45.0


@pytest.mark.usefixtures("local_time_five_hours_behind_utc")
@pytest.mark.parametrize("value", ["Thu Jan  1 00:00:45 2026", "Thu, 01 Jan 2026 00:00:45 -0000"])
def test_parse_retry_after_zoneless_dates_are_utc(value: str) -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert parse_retry_after({"Retry-After": value}, now=now) == 45.0


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"),
        (503, b"<!DOCTYPE html><p>Service Unavailable</p>"),
        (504, b"upstream request timeout"),
        (500, b""),
        (500, b"null"),
        (502, b'{"message": "Internal server error"}'),
        (500, b'["error"]'),
    ],
)
def test_gateway_error_bodies_are_server_errors(status: int, payload: bytes) -> None:
    err = raises_from_parse(status, payload, headers={"Content-Type": "text/html"})
    assert type(err) is ServerError
    assert err.status == status
    assert err.code is None
    assert f"HTTP {status}" in str(err)
    assert "<html" not in str(err)  # raw bodies never end up in messages


def test_gateway_string_error_is_kept_as_message() -> None:
    err = raises_from_parse(502, body({"error": "upstream connect error"}))
    assert type(err) is ServerError
    assert "upstream connect error" in str(err)


def test_non_string_code_is_ignored() -> None:
    err = raises_from_parse(401, body({"success": False, "error": {"code": 7, "message": 8}}))
    assert type(err) is AuthenticationError
    assert err.code is None


def test_long_messages_are_truncated() -> None:
    err = raises_from_parse(400, error_body(None, "x" * 10_000))
    assert len(str(err)) < 600


def test_secrets_are_redacted_from_messages() -> None:
    secret = "sk_live_secret456"
    refresh = "rt_abc123xyz456"
    payload = error_body(
        "INVALID_CREDENTIALS", f"bad secret {secret}; also refresh {refresh} and {secret}"
    )
    err = raises_from_parse(401, payload, redact=(secret, refresh, ""))
    text = str(err)
    assert secret not in text
    assert refresh not in text
    assert text.count("***") == 3
    assert secret not in repr(err)
    assert all(secret not in str(arg) for arg in err.args)


def test_gateway_string_error_is_redacted_too() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.payload.sig"
    err = raises_from_parse(401, body({"error": f"bad token {token}"}), bearer=True, redact=[token])
    assert token not in str(err)


def test_secret_at_the_truncation_boundary_is_not_leaked() -> None:
    secret = "SECRETVALUE-abcdefghijklmnop"
    err = raises_from_parse(
        401, error_body("INVALID_CREDENTIALS", "a" * 490 + secret), redact=[secret]
    )
    assert secret[:10] not in str(err)


# --- parse_response: inputs that crash the parser (bugs) --------------------------------------


def test_huge_integer_retry_after_is_ignored() -> None:
    payload = (
        b'{"success":false,"error":{"code":"RATE_LIMIT_EXCEEDED","retry_after":1'
        + (b"0" * 400)
        + b"}}"
    )
    err = raises_from_parse(429, payload)
    assert isinstance(err, RateLimitError)


def test_retry_after_date_with_absurd_year_is_ignored() -> None:
    headers = {"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}
    err = raises_from_parse(429, error_body("RATE_LIMIT_EXCEEDED", retry_after=5), headers=headers)
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 5.0


@pytest.mark.parametrize("status", [200, 500])
def test_deeply_nested_json_is_malformed(status: int) -> None:
    raises_from_parse(status, b"[" * 100_000)


# --- RateLimitInfo ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
        ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"),
        ("X-RATELIMIT-LIMIT", "X-RATELIMIT-REMAINING", "X-RATELIMIT-RESET"),
    ],
)
def test_rate_limit_headers_case_insensitive(names: tuple[str, str, str]) -> None:
    headers = CIMultiDict(zip(names, ("1000", "999", "1640995200"), strict=True))
    info = RateLimitInfo.from_headers(headers, now=5.0)
    assert info.limit == 1000
    assert info.remaining == 999
    assert info.reset == 1640995200.0
    assert info.observed_at == 5.0
    assert info.present


def test_rate_limit_headers_absent() -> None:
    info = RateLimitInfo.from_headers(CIMultiDict({"Content-Type": "application/json"}), now=1.0)
    assert (info.limit, info.remaining, info.reset) == (None, None, None)
    assert not info.present


def test_rate_limit_headers_partial_and_unreadable() -> None:
    headers = CIMultiDict(
        {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": " 7 ", "X-RateLimit-Reset": "nan"}
    )
    info = RateLimitInfo.from_headers(headers, now=1.0)
    assert info.limit is None
    assert info.remaining == 7
    assert info.reset is None
    assert info.present


def test_rate_limit_headers_fractions_and_infinities() -> None:
    headers = CIMultiDict(
        {"X-RateLimit-Limit": "1000.9", "X-RateLimit-Remaining": "inf", "X-RateLimit-Reset": "1e3"}
    )
    info = RateLimitInfo.from_headers(headers, now=1.0)
    assert info.limit == 1000
    assert info.remaining is None
    assert info.reset == 1000.0


def test_rate_limit_observed_at_defaults_to_wall_time() -> None:
    before = time.time()
    info = RateLimitInfo.from_headers(CIMultiDict())
    assert info.observed_at >= before


# --- RetryPolicy -----------------------------------------------------------------------------


class EdgeRng(random.Random):
    """uniform() returns one end of the interval, to pin full-jitter bounds exactly."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (100, 8.0)],
)
def test_backoff_full_jitter_bounds(attempt: int, ceiling: float) -> None:
    policy = RetryPolicy()
    assert policy.backoff(attempt, EdgeRng(high=True)) == ceiling
    assert policy.backoff(attempt, EdgeRng(high=False)) == 0.0


def test_backoff_huge_attempt_does_not_overflow() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=30.0)
    assert policy.backoff(10**6, EdgeRng(high=True)) == 30.0


@given(
    attempt=st.integers(min_value=0, max_value=200),
    seed=st.integers(min_value=0, max_value=2**32),
    base=st.floats(min_value=0.001, max_value=10),
    cap=st.floats(min_value=0.001, max_value=120),
)
@PROPERTY
def test_backoff_is_within_full_jitter_range(
    attempt: int, seed: int, base: float, cap: float
) -> None:
    policy = RetryPolicy(backoff_base=base, backoff_cap=cap)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0**attempt)


def test_backoff_without_rng_uses_module_random() -> None:
    policy = RetryPolicy()
    for attempt in range(8):
        assert 0.0 <= policy.backoff(attempt) <= 8.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(60, 60.0), (0, 0.0), (2.5, 2.5), (120, 120.0), (500, 120.0), (None, None), (-1, None)],
)
def test_server_wait_is_capped(retry_after: float | None, expected: float | None) -> None:
    policy = RetryPolicy()
    assert policy.server_wait(RateLimitError("m", retry_after=retry_after)) == expected


def test_server_wait_custom_cap_and_other_errors() -> None:
    policy = RetryPolicy(max_retry_after=10)
    assert policy.server_wait(RateLimitError("m", retry_after=60)) == 10.0
    assert policy.server_wait(ServerError("m", status=503)) is None
    assert policy.server_wait(ValueError("x")) is None
    cause = RateLimitError("m", retry_after=7)
    assert policy.server_wait(TokenUnavailableError("t", cause=cause)) == 7.0


def test_delay_uses_server_wait_plus_small_jitter() -> None:
    policy = RetryPolicy()
    err = RateLimitError("m", retry_after=60)
    assert policy.delay(err, 0, EdgeRng(high=False)) == 60.0
    assert policy.delay(err, 0, EdgeRng(high=True)) == 61.0  # jitter at most 1 s ...
    small = RateLimitError("m", retry_after=2)
    assert policy.delay(small, 0, EdgeRng(high=True)) == pytest.approx(2.2)  # ... or 10 %
    zero = RateLimitError("m", retry_after=0)
    assert policy.delay(zero, 5, EdgeRng(high=True)) == 0.0


def test_delay_without_server_wait_is_backoff() -> None:
    policy = RetryPolicy()
    err = ServerError("m", status=502)
    assert policy.delay(err, 3, EdgeRng(high=True)) == 2.0
    assert policy.delay(RateLimitError("m"), 0, EdgeRng(high=True)) == 0.25


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff_base": 0},
        {"backoff_base": -1},
        {"backoff_cap": 0},
        {"max_wait": -1},
        {"max_retry_after": -0.5},
    ],
)
def test_retry_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        RetryPolicy(**kwargs)


# --- outcome_of / is_transient ---------------------------------------------------------------

OUTCOMES = [
    (RateLimitError("m"), Outcome.NOT_ACTED, True),
    (RateLimitError("m", status=200, retry_after=5), Outcome.NOT_ACTED, True),
    (APIConnectionError("refused", sent=False), Outcome.NOT_ACTED, True),
    (APITimeoutError("connect timeout", sent=False), Outcome.NOT_ACTED, True),
    (APIConnectionError("reset"), Outcome.UNKNOWN, True),
    (APITimeoutError("read timeout"), Outcome.UNKNOWN, True),
    (ServerError("m", status=500), Outcome.UNKNOWN, True),
    (ServerError("m", status=503), Outcome.UNKNOWN, True),
    (BadRequestError("m", status=400), Outcome.FINAL, False),
    (InvalidPhoneNumberError("m", status=400), Outcome.FINAL, False),
    (AuthenticationError("m", status=401), Outcome.FINAL, False),
    (InvalidCredentialsError("m", status=401), Outcome.FINAL, False),
    (InvalidRefreshTokenError("m", status=401), Outcome.FINAL, False),
    (AccessTokenError("m", status=401), Outcome.FINAL, False),
    (ExpiredTokenError("m", status=401), Outcome.FINAL, False),
    (PermissionDeniedError("m", status=403), Outcome.FINAL, False),
    (NotFoundError("m", status=404), Outcome.FINAL, False),
    (APIStatusError("m", status=418), Outcome.FINAL, False),
    (MalformedResponseError("m"), Outcome.FINAL, False),
    (ConfigurationError("m"), Outcome.FINAL, False),
    (ClientClosedError("m"), Outcome.FINAL, False),
    (TokenUnavailableError("m"), Outcome.FINAL, False),
    (ValueError("not ours"), Outcome.FINAL, False),
    (KeyError("not ours"), Outcome.FINAL, False),
    (TimeoutError("builtin, not wrapped"), Outcome.FINAL, False),
    (ConnectionResetError("builtin, not wrapped"), Outcome.FINAL, False),
]


@pytest.mark.parametrize(
    ("error", "outcome", "transient"),
    OUTCOMES,
    ids=[f"{type(e).__name__}-{o.name}" for e, o, _ in OUTCOMES],
)
def test_outcome_and_transience(error: BaseException, outcome: Outcome, transient: bool) -> None:
    assert outcome_of(error) is outcome
    assert is_transient(error) is transient


# --- TokenGrant.from_data --------------------------------------------------------------------

GRANT = {
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.sig",
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": "rt_abc123xyz456",
}


def grant(data: Any) -> TokenGrant:
    return TokenGrant.from_data(data, sent_at=100.0, sent_at_wall=1_700_000_000.0)


def test_token_grant_documented_data() -> None:
    g = grant(GRANT)
    assert g.access_token == GRANT["access_token"]
    assert g.token_type == "Bearer"
    assert g.expires_in == 3600.0
    assert isinstance(g.expires_in, float)
    assert g.refresh_token == "rt_abc123xyz456"
    assert (g.sent_at, g.sent_at_wall) == (100.0, 1_700_000_000.0)


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (3600, 3600.0),
        (1, 1.0),
        (0.5, 0.5),
        (86400.0, 86400.0),
        ("1800", 1800.0),
        (" 1800 ", 1800.0),
        ("90.5", 90.5),
        (None, 3600.0),
    ],
)
def test_token_grant_expires_in(expires_in: Any, expected: float) -> None:
    assert grant({**GRANT, "expires_in": expires_in}).expires_in == expected


def test_token_grant_missing_expires_in_defaults_to_an_hour() -> None:
    data = {k: v for k, v in GRANT.items() if k != "expires_in"}
    assert grant(data).expires_in == 3600.0


@pytest.mark.parametrize(
    "expires_in",
    [
        *(0, -1, -3600, 0.0, True, False, math.nan, math.inf, -math.inf),
        *("0", "-5", "abc", "", "nan", "inf", [3600], {"s": 3600}),
    ],
)
def test_token_grant_bad_expires_in(expires_in: Any) -> None:
    with pytest.raises(MalformedResponseError, match="expires_in"):
        grant({**GRANT, "expires_in": expires_in})


def test_token_grant_huge_integer_expires_in_is_malformed() -> None:
    with pytest.raises(MalformedResponseError):
        grant({**GRANT, "expires_in": 10**400})


@pytest.mark.parametrize("access_token", [None, "", "   ", 123, ["a"], {"t": "a"}, True])
def test_token_grant_bad_access_token(access_token: Any) -> None:
    with pytest.raises(MalformedResponseError, match="access_token"):
        grant({**GRANT, "access_token": access_token})


def test_token_grant_missing_access_token() -> None:
    data = {k: v for k, v in GRANT.items() if k != "access_token"}
    with pytest.raises(MalformedResponseError, match="access_token"):
        grant(data)


def test_token_grant_strips_access_token() -> None:
    assert grant({**GRANT, "access_token": "  abc \n"}).access_token == "abc"


def test_token_grant_token_type_defaults_to_bearer() -> None:
    data = {k: v for k, v in GRANT.items() if k != "token_type"}
    assert grant(data).token_type == "Bearer"
    assert grant({**GRANT, "token_type": None}).token_type == "Bearer"
    assert grant({**GRANT, "token_type": " bearer "}).token_type == "bearer"


@pytest.mark.parametrize("token_type", ["", "  ", "Bearer extra", 5, ["Bearer"], True])
def test_token_grant_bad_token_type(token_type: Any) -> None:
    with pytest.raises(MalformedResponseError, match="token_type"):
        grant({**GRANT, "token_type": token_type})


def test_token_grant_missing_refresh_token_is_none() -> None:
    data = {k: v for k, v in GRANT.items() if k != "refresh_token"}
    assert grant(data).refresh_token is None
    assert grant({**GRANT, "refresh_token": None}).refresh_token is None
    assert grant({**GRANT, "refresh_token": " rt_x "}).refresh_token == "rt_x"


@pytest.mark.parametrize("refresh_token", ["", "  ", 5, ["rt_x"], False])
def test_token_grant_bad_refresh_token(refresh_token: Any) -> None:
    with pytest.raises(MalformedResponseError, match="refresh_token"):
        grant({**GRANT, "refresh_token": refresh_token})


@pytest.mark.parametrize("data", [None, [], "token", 3600, True])
def test_token_grant_data_not_an_object(data: Any) -> None:
    with pytest.raises(MalformedResponseError):
        grant(data)


# --- property tests --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
finite_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

# Values shaped like the envelope, so that deep branches are reached often.
error_objects = st.fixed_dictionaries(
    {},
    optional={
        "code": st.sampled_from(
            [
                "INVALID_CREDENTIALS",
                "INVALID_REFRESH_TOKEN",
                "EXPIRED_TOKEN",
                "INVALID_TOKEN",
                "REVOKED_TOKEN",
                "INVALID_PHONE_NUMBER",
                "RATE_LIMIT_EXCEEDED",
                "",
            ]
        )
        | json_values,
        "message": st.text(max_size=50) | json_values,
        "retry_after": json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "success": st.booleans() | json_values,
        "data": json_values,
        "error": error_objects | json_values,
    },
)
header_values = st.text(max_size=40) | st.sampled_from(
    [
        "60",
        "-1",
        "1e400",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "Thursday, 01-Jan-26 00:00:30 GMT",
        "Mon, 01 Jan 2020 00:00:00 +9999",
    ]
)
headers_strategy = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "X-Request-Id", "Content-Type"]),
    header_values,
    max_size=3,
)
statuses = st.integers(min_value=100, max_value=599)


def parse_or_error(
    status: int, headers: Any, payload: bytes, **kwargs: Any
) -> ApiResponse | APIMWError:
    """The parsed response, or the SDK error it raised (anything else propagates)."""
    try:
        return parse_response(status, CIMultiDict(headers), payload, **kwargs)
    except APIMWError as exc:
        return exc


def check_parse(status: int, headers: dict[str, str], payload: bytes, **kwargs: Any) -> None:
    result = parse_or_error(status, headers, payload, **kwargs)
    if isinstance(result, ApiResponse):
        assert 200 <= status < 300
        assert result.status == status
        return
    assert isinstance(result, (APIStatusError, MalformedResponseError))
    assert isinstance(str(result), str)
    if isinstance(result, APIStatusError):
        assert result.status is not None
        assert 100 <= result.status <= 599
    if isinstance(result, RateLimitError) and result.retry_after is not None:
        assert result.retry_after >= 0
        assert math.isfinite(result.retry_after)


@given(
    status=statuses, value=json_values | envelopes, headers=headers_strategy, bearer=st.booleans()
)
@PROPERTY
def test_parse_response_any_json_raises_only_sdk_errors(
    status: int, value: Any, headers: dict[str, str], bearer: bool
) -> None:
    check_parse(status, headers, json.dumps(value).encode(), bearer=bearer)


@given(status=statuses, payload=st.binary(max_size=200), headers=headers_strategy)
@PROPERTY
def test_parse_response_any_bytes_raises_only_sdk_errors(
    status: int, payload: bytes, headers: dict[str, str]
) -> None:
    check_parse(status, headers, payload)


@given(
    status=statuses,
    value=envelopes,
    secrets=st.lists(st.text(min_size=1, max_size=10), max_size=3),
)
@PROPERTY
def test_parse_response_redacted_secrets_never_appear(
    status: int, value: Any, secrets: list[str]
) -> None:
    # A secret planted in the server's message never shows in the error text.
    secret = "SECRET-" + "".join(secrets)
    if isinstance(value.get("error"), dict):
        value["error"]["message"] = f"echo {secret} echo"
    result = parse_or_error(status, {}, json.dumps(value).encode(), redact=[secret])
    assert secret not in str(result)


@given(status=st.integers(min_value=200, max_value=299), data=finite_json_values)
@PROPERTY
def test_parse_response_success_round_trips_data(status: int, data: Any) -> None:
    payload = json.dumps({"success": True, "data": data}).encode()
    assert parse_response(status, {}, payload).data == data


@given(value=json_values | st.fixed_dictionaries({}, optional=dict.fromkeys(GRANT, json_values)))
@PROPERTY
def test_token_grant_any_json_is_valid_or_malformed(value: Any) -> None:
    try:
        g = grant(value)
    except MalformedResponseError:
        return
    assert isinstance(g.access_token, str)
    assert g.access_token
    assert g.access_token == g.access_token.strip()
    assert math.isfinite(g.expires_in)
    assert g.expires_in > 0
    assert g.refresh_token is None or (isinstance(g.refresh_token, str) and g.refresh_token)
    assert isinstance(g.token_type, str)
    assert " " not in g.token_type


user_like = st.fixed_dictionaries(
    {}, optional={"id": json_values, "email": json_values, "name": json_values}
)
tenant_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=10) | json_values,
        "name": json_values,
        "plan": json_values,
        "status": json_values,
    },
)
me_like = st.fixed_dictionaries(
    {},
    optional={
        "user": user_like | json_values,
        "tenant": tenant_like | json_values,
        "permissions": st.lists(st.text(max_size=10) | json_values, max_size=4) | json_values,
    },
)


@given(value=json_values | me_like)
@PROPERTY
def test_current_user_any_json_is_valid_or_malformed(value: Any) -> None:
    try:
        me = CurrentUser.from_data(value)
    except MalformedResponseError:
        return
    assert isinstance(me.user.id, str)
    assert isinstance(me.tenant.id, str)
    assert all(isinstance(p, str) for p in me.permissions)
    for field in (me.user.email, me.user.name, me.tenant.name, me.tenant.plan, me.tenant.status):
        assert field is None or isinstance(field, str)


# --- transport errors name what was tried ----------------------------------------------------


async def test_a_refused_connection_names_the_host_port_and_reason() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(APIConnectionError) as caught:
            await send(session, "POST", f"http://127.0.0.1:{port}/v1/auth/token?secret=x")
    message = str(caught.value)
    assert (
        message
        == f"POST http://127.0.0.1:{port}/v1/auth/token: cannot connect (Connection refused)"
    )
    assert caught.value.sent is False
    assert "secret" not in message  # never the query string


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.apimw.com/v1/auth/token", "https://api.apimw.com:443/v1/auth/token"),
        ("http://[::1]:8080/v1/x?q=1", "http://[::1]:8080/v1/x"),
        ("http://127.0.0.1:9/v1/a%2Fb", "http://127.0.0.1:9/v1/a%2Fb"),
    ],
)
def test_transport_errors_show_scheme_host_port_and_path(url: str, shown: str) -> None:
    assert _target(url) == shown
