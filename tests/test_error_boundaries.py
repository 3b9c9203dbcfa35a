"""Errors that leave the SDK: they cross process pools (pickle), and error trackers, ``%r``
logging and debuggers read their whole ``__cause__`` / ``__context__`` chain, where no token or
secret may be found."""

from __future__ import annotations

import gzip
import inspect
import json
import multiprocessing
import pickle
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

import apimw_async
import apimw_async.webhooks
from apimw_async import APIMWError, Client, FakeClock, TokenManager

from .conftest import drive
from .raw_server import ACCESS_TOKEN, CREDENTIALS, REFRESH_TOKEN, RawServer, http_answer

# --- pickling ---------------------------------------------------------------------------------


def exported_errors() -> list[type[APIMWError]]:
    found: dict[str, type[APIMWError]] = {}
    for module in (apimw_async, apimw_async.webhooks):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, BaseException):
                found[name] = value
    return [found[name] for name in sorted(found)]


def example(cls: type[APIMWError]) -> APIMWError:
    """An instance with every attribute its constructor takes set to a non-default value."""
    parameters = inspect.signature(cls.__init__).parameters
    options: dict[str, Any] = {}
    if "status" in parameters:
        options["status"] = 418
    if "code" in parameters:
        options["code"] = "SOME_CODE"
    if "headers" in parameters:
        options["headers"] = {"X-Request-Id": "req-1"}
    if "retry_after" in parameters:
        options["retry_after"] = 2.5
    if "field" in parameters:
        options["field"] = "to"
    if "sent" in parameters:
        options["sent"] = False
    if "cause" in parameters:
        options["cause"] = apimw_async.RateLimitError("slow down", retry_after=3.0)
    return cls(f"{cls.__name__} happened", **options)


def state(error: BaseException) -> tuple[Any, ...]:
    return (type(error), str(error), error.args, sorted(vars(error).items()))


ERRORS = exported_errors()


def test_every_exported_error_class_is_found() -> None:
    names = {cls.__name__ for cls in ERRORS}
    assert {"APIStatusError", "InvalidPhoneNumberError", "TokenUnavailableError"} <= names
    assert "WebhookPayloadError" in names
    assert len(ERRORS) >= 24


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_exported_error_pickles(cls: type[APIMWError]) -> None:
    error = example(cls)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert state(copy) == state(error)


def _raise(name: str) -> None:
    cls = {cls.__name__: cls for cls in exported_errors()}[name]
    raise example(cls)


def test_errors_raised_in_a_process_pool_come_back_typed() -> None:
    # One InvalidPhoneNumberError that cannot be unpickled used to break the whole pool.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        futures = {cls: pool.submit(_raise, cls.__name__) for cls in ERRORS}
        for cls, future in futures.items():
            error = future.exception(timeout=120)
            assert error is not None
            assert state(error) == state(example(cls))
        assert pool.submit(str, 1).result(timeout=120) == "1"  # the pool still works


# --- no secret in the chain -------------------------------------------------------------------

SECRETS = (ACCESS_TOKEN, REFRESH_TOKEN, CREDENTIALS.api_secret)


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend((current.__cause__, current.__context__))


def assert_no_secret(error: BaseException) -> None:
    for link in chain(error):
        texts = [repr(link), str(link), repr(link.args), repr(vars(link))]
        request_info = getattr(link, "request_info", None)
        if request_info is not None:
            texts.append(repr(request_info))
            texts.append(repr(dict(request_info.headers)))
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, f"{type(link).__name__} shows a secret: {text[:300]}"


#: Malformed answers to a bearer call (GET auth/me), as raw bytes on the wire.
BEARER_ANSWERS: dict[str, bytes | None] = {
    "not JSON": http_answer(200, b"<html>oops</html>"),
    "not the envelope": http_answer(200, b'{"ok": true}'),
    "success not a boolean": http_answer(200, b'{"success": "yes", "data": {}}'),
    "data of the wrong shape": http_answer(200, b'{"success": true, "data": [1, 2]}'),
    "JSON echoing the token": http_answer(200, f'{{"token": "{ACCESS_TOKEN}"'.encode()),
    "401 not JSON": http_answer(401, b"nope"),
    "500 echoing the token": http_answer(
        500, json.dumps({"success": False, "error": {"message": ACCESS_TOKEN}}).encode()
    ),
    "broken status line": b"HTTP/1.1 OK-ish\r\n\r\n",
    "header without colon": b"HTTP/1.1 200 OK\r\nBroken header line\r\nContent-Length: 0\r\n\r\n",
    "bad content length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    "truncated body": http_answer(200, b'{"success": tr', content_length=500),
    "bad gzip": http_answer(200, b"not gzip at all", headers={"Content-Encoding": "gzip"}),
    "gzip of garbage": http_answer(
        200, gzip.compress(b"\xff\xfe garbage"), headers={"Content-Encoding": "gzip"}
    ),
    "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "closed without answer": None,
}


@pytest.mark.parametrize("answer", BEARER_ANSWERS, ids=str)
async def test_no_bearer_token_in_the_chain_of_an_error_for_a_malformed_answer(
    answer: str,
) -> None:
    async with RawServer() as server:
        server.answers["/v1/auth/me"] = BEARER_ANSWERS[answer]
        async with Client(CREDENTIALS, base_url=server.base_url, timeout=30.0) as client:
            with pytest.raises(APIMWError) as caught:
                await client.auth.me()
        assert any(h.get("authorization") for p, h in server.requests if p.endswith("/me"))
    assert_no_secret(caught.value)


#: Malformed answers to the token endpoint (its body carries the secret or a refresh token).
TOKEN_ANSWERS: dict[str, bytes | None] = {
    "JSON cut short": http_answer(200, f'{{"refresh_token": "{REFRESH_TOKEN}"'.encode()),
    "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    "broken status line": b"HTTP/1.1 OK-ish\r\n\r\n",
    "400 echoing the secret": http_answer(
        400, json.dumps({"error": f"bad secret {CREDENTIALS.api_secret}"}).encode()
    ),
}


@pytest.mark.parametrize("answer", TOKEN_ANSWERS, ids=str)
async def test_no_secret_in_the_chain_of_an_error_for_a_malformed_token_answer(
    answer: str,
) -> None:
    async with RawServer() as server:
        server.answers["/v1/auth/token"] = TOKEN_ANSWERS[answer]
        clock = FakeClock()  # retries until the deadline, in no real time
        async with TokenManager(CREDENTIALS, base_url=server.base_url, clock=clock) as tokens:
            [error] = await drive(clock, tokens.get_token())
    assert isinstance(error, APIMWError)
    assert_no_secret(error)
