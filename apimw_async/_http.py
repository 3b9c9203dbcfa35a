"""The HTTP transport: sessions per event loop, one request function, the envelope parser.

This is the only module that talks to aiohttp for API calls and the only place that turns an
HTTP answer into data or a typed error. Everything above it deals in parsed ``data`` and
:mod:`apimw_async._errors` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import ipaddress
import json
import os
import socket
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    MalformedResponseError,
    error_from_status,
)

__all__ = [
    "ApiResponse",
    "RateLimitInfo",
    "SessionProvider",
    "normalize_base_url",
    "parse_response",
    "send",
]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_base_url(
    base_url: str,
    *,
    allow_insecure_http: bool = False,
    insecure_hint: str = "pass allow_insecure_http=True",
) -> str:
    """Check a base URL and return it without a trailing slash.

    HTTPS is required; plain ``http`` is accepted for loopback hosts (the bundled fake server)
    or with ``allow_insecure_http=True``. ``insecure_hint`` is how the refusal tells the user to
    opt in (the CLI names its flag).
    """
    try:
        url = URL(base_url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"base_url {base_url!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"base_url {base_url!r} must be an absolute http(s) URL")
    if url.user or url.password:
        raise ConfigurationError("base_url must not carry credentials")
    if url.query_string or url.fragment:
        raise ConfigurationError("base_url must not carry a query or fragment")
    if url.scheme == "http" and not (_is_loopback(url.host) or allow_insecure_http):
        raise ConfigurationError(
            f"refusing plain-http base_url for non-loopback host {url.host!r}: APIMW requires "
            f"HTTPS; {insecure_hint} to override (never in production)"
        )
    return str(url).rstrip("/")


# --- responses -------------------------------------------------------------------------------


#: An ``X-RateLimit-Reset`` below this is a number of seconds, not an epoch time.
_EPOCH_THRESHOLD = 1e9


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


@attrs.frozen
class RateLimitInfo:
    """The ``X-RateLimit-*`` headers of one response (``None`` where absent or unreadable)."""

    limit: int | None
    remaining: int | None
    reset: float | None
    observed_at: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, now: float | None = None) -> RateLimitInfo:
        """Read the headers case-insensitively (``headers`` should be case-insensitive)."""
        limit = _header_float(headers, "X-RateLimit-Limit")
        remaining = _header_float(headers, "X-RateLimit-Remaining")
        return cls(
            limit=None if limit is None else int(limit),
            remaining=None if remaining is None else int(remaining),
            reset=_header_float(headers, "X-RateLimit-Reset"),
            observed_at=time.time() if now is None else now,
        )

    @property
    def present(self) -> bool:
        """Whether the response carried any of the headers."""
        return not (self.limit is None and self.remaining is None and self.reset is None)

    def reset_in(self, now: float) -> float | None:
        """Seconds from ``now`` (epoch) until the window resets; ``None`` if unknown or past.

        ``X-RateLimit-Reset`` is documented as Unix epoch seconds; a value too small to be a
        date (below ``1e9``, i.e. before 2001) is read as seconds after the response instead,
        as some gateways send it.
        """
        if self.reset is None:
            return None
        at = self.reset if self.reset >= _EPOCH_THRESHOLD else self.observed_at + self.reset
        wait = at - now
        return wait if wait > 0 else None


@attrs.frozen
class ApiResponse:
    """A successful answer: its status, headers and the envelope's ``data``."""

    status: int
    headers: Mapping[str, str]
    data: Any


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), if usable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            # RFC 9110: HTTP dates are UTC, whatever zone this machine is in.
            when = when.replace(tzinfo=datetime.timezone.utc)
        try:
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (OverflowError, ValueError, OSError):
            return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return max(0.0, number)


def loads(body: bytes) -> Any:
    """``json.loads`` that raises only ``ValueError`` (nesting too deep becomes one too)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _error_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    bearer: bool,
    redact: Iterable[str],
) -> APIStatusError:
    code: str | None = None
    message = ""
    retry_after = parse_retry_after(headers)
    try:
        payload = loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, str) and raw_code else None
        raw_message = error.get("message")
        message = raw_message if isinstance(raw_message, str) else ""
        if retry_after is None:
            retry_after = _number(error.get("retry_after"))
    elif isinstance(error, str):
        # Some gateways answer {"error": "..."}; keep the text, there is no code.
        message = error
    # Scrub before cutting: a secret straddling the cut must not leave its first half behind.
    message = _redact(message, redact)[:500].strip()
    described = f"HTTP {status}" + (f" {code}" if code else "")
    text = f"{described}: {message}" if message else f"{described} (no error message)"
    return error_from_status(
        status, code, text, headers=headers, retry_after=retry_after, bearer=bearer
    )


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    bearer: bool = False,
    redact: Iterable[str] = (),
) -> ApiResponse:
    """Turn one HTTP answer into an :class:`ApiResponse` or raise the matching typed error.

    Success means a 2xx status and ``{"success": true, "data": ...}``; a 2xx without a body
    (e.g. 204) gives ``data=None``. Anything else that claims success is a
    :class:`MalformedResponseError`; error statuses map through :func:`error_from_status`.
    """
    if not 200 <= status < 300:
        raise _error_response(status, headers, body, bearer=bearer, redact=redact)
    if not body.strip():
        return ApiResponse(status, headers, None)
    try:
        payload = loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponseError(
            f"HTTP {status} with a body that is not JSON", status=status
        ) from None
    if not isinstance(payload, dict) or "success" not in payload:
        raise MalformedResponseError(
            f"HTTP {status} with a body that is not the APIMW envelope", status=status
        )
    if payload["success"] is True:
        return ApiResponse(status, headers, payload.get("data"))
    if payload["success"] is False:
        # An error envelope with a 2xx status: believe the envelope.
        raise _error_response(
            400 if status < 400 else status, headers, body, bearer=bearer, redact=redact
        )
    raise MalformedResponseError(
        f"HTTP {status}: envelope field 'success' is not a boolean", status=status
    )


# --- sending ---------------------------------------------------------------------------------


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    params: Mapping[str, str] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
    bearer: bool = False,
    bypass_middlewares: bool = False,
    redact: Iterable[str] = (),
    on_headers: Callable[[CIMultiDictProxy[str]], None] | None = None,
) -> ApiResponse:
    """Send one request and parse its answer; no retries here (see :mod:`._retry`).

    ``url`` may be a :class:`yarl.URL` built with ``encoded=True`` to send a path verbatim.

    Transport failures become :class:`APIConnectionError` (``sent=False`` only when the
    connection could not be established, so the server certainly did not act) or
    :class:`APITimeoutError`. Redirects are not followed: the API does not redirect, and a
    redirected token call would carry credentials elsewhere.
    """
    kwargs: dict[str, Any] = {"headers": headers, "params": params, "allow_redirects": False}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if json_body is not None:
        kwargs["json"] = json_body
    if bypass_middlewares:
        kwargs["middlewares"] = ()
    try:
        async with session.request(method, url, **kwargs) as resp:
            body = await resp.read()
            status = resp.status
            resp_headers = resp.headers
    except aiohttp.ConnectionTimeoutError as exc:
        raise APITimeoutError(f"{method} {_target(url)}: connect timed out", sent=False) from exc
    except asyncio.TimeoutError as exc:
        raise APITimeoutError(f"{method} {_target(url)}: timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise APIConnectionError(
            f"{method} {_target(url)}: cannot connect ({_reason(exc)})", sent=False
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(
            f"{method} {_target(url)}: connection failed ({_reason(exc)})"
        ) from exc
    except RuntimeError as exc:
        if session.closed:
            raise ClientClosedError("the aiohttp session was closed") from exc
        raise
    if on_headers is not None:
        on_headers(resp_headers)
    return parse_response(status, resp_headers, body, bearer=bearer, redact=redact)


def _target(url: str | URL) -> str:
    # Transport errors name the host and port tried (a mistyped base URL shows), never the
    # query string.
    try:
        parsed = URL(url)
        host = parsed.raw_host or ""
        host = f"[{host}]" if ":" in host else host
        return f"{parsed.scheme}://{host}:{parsed.port}{parsed.raw_path}"
    except (ValueError, TypeError):
        return _path(url)


def _reason(exc: BaseException) -> str:
    """``Connection refused``, ``Name or service not known``...: the OS's word, if any."""
    os_error = getattr(exc, "os_error", None)
    for error in (os_error, exc):
        if not isinstance(error, OSError):
            continue
        if (
            not isinstance(error, socket.gaierror)
            and isinstance(error.errno, int)
            and error.errno > 0
        ):
            return os.strerror(error.errno)  # asyncio's strerror is "Connect call failed (...)"
        if error.strerror:
            return str(error.strerror)
    return type(exc).__name__


def _path(url: str | URL) -> str:
    # Error messages name the endpoint, never the query string.
    try:
        return URL(url).path
    except ValueError:
        return "?"


# --- sessions --------------------------------------------------------------------------------


def _drive_once(agen: AsyncGenerator[None, None]) -> None:
    # Start the generator synchronously: it reaches its first ``yield`` without awaiting, and
    # the first iteration registers it with the running loop's async-generator hooks.
    step = agen.asend(None)
    with contextlib.suppress(StopIteration):
        step.send(None)


def on_loop_shutdown(callback: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Run ``callback`` when the running loop shuts down its async generators.

    ``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio call ``loop.shutdown_asyncgens()``
    before closing the loop; a suspended async generator registered with the loop is then
    closed *inside* the loop, which is the last moment an owned session can be closed cleanly.
    Keep a reference to the returned generator; ``await gen.aclose()`` runs the callback early.
    """

    async def hook() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await callback()

    agen = hook()
    _drive_once(agen)
    return agen


class _OwnedSession:
    __slots__ = ("closer", "session")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.closer: AsyncGenerator[None, None] | None = None


class SessionProvider:
    """The aiohttp session for the running loop: the user's, or one owned per event loop.

    A user-owned session is used as it is and never closed. Otherwise a session is created
    lazily inside each running loop (aiohttp sessions are loop-bound) and closed by
    :meth:`aclose` or, failing that, when the loop shuts down.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
        connector_limit: int = 100,
    ) -> None:
        self._user_session = session
        self._timeout = timeout
        self._limit = connector_limit
        self._owned: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _OwnedSession] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closed = False
        # The latest (loop, session) handed out: skips the weak-dict lookup on the hot path.
        self._last: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None

    @property
    def owns_session(self) -> bool:
        """Whether sessions are created (and closed) here rather than borrowed."""
        return self._user_session is None

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self) -> aiohttp.ClientSession:
        """The session to use in the running event loop (created on first use)."""
        if self._closed:
            raise ClientClosedError("this client was closed")
        if self._user_session is not None:
            if self._user_session.closed:
                raise ClientClosedError("the aiohttp session passed in was closed by its owner")
            return self._user_session
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop and not last[1].closed:
            return last[1]
        owned = self._owned.get(loop)
        if owned is None or owned.session.closed:
            with self._lock:
                owned = self._owned.get(loop)
                if owned is None or owned.session.closed:
                    owned = self._create(loop)
        # One tuple, assigned at once: a thread running another loop reads both or neither.
        self._last = (loop, owned.session)
        return owned.session

    def _create(self, loop: asyncio.AbstractEventLoop) -> _OwnedSession:
        session = aiohttp.ClientSession(
            timeout=self._timeout or aiohttp.ClientTimeout(),
            connector=aiohttp.TCPConnector(limit=self._limit),
        )
        owned = _OwnedSession(session)

        async def close() -> None:
            with self._lock:
                if self._owned.get(loop) is owned:
                    del self._owned[loop]
            last = self._last
            if last is not None and last[0] is loop:
                self._last = None
            if not session.closed:
                await session.close()

        owned.closer = on_loop_shutdown(close)
        self._owned[loop] = owned
        return owned

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's sessions (their loops do not run here)."""
        self._lock = threading.Lock()
        self._last = None
        for owned in self._owned.values():
            # Closing would touch the parent's sockets; just stop aiohttp from warning.
            owned.session._connector = None
            owned.closer = None
        self._owned = weakref.WeakKeyDictionary()

    async def aclose(self) -> None:
        """Close the owned session of the running loop and forget those of other loops."""
        self._closed = True
        self._last = None
        if self._user_session is not None:
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            owned_here = self._owned.pop(loop, None)
            # Sessions of loops that already ended were closed at their shutdown; those of
            # loops still running (other threads) close there: dropping the generator lets
            # that loop's finalizer hook run its ``finally`` inside that loop.
            self._owned.clear()
        if owned_here is not None and owned_here.closer is not None:
            await owned_here.closer.aclose()
