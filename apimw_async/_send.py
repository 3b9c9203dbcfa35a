"""Sending one API request over aiohttp: transport failures become typed errors, the answer
goes through the envelope parser. No retries here (:mod:`._retry` decides those)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._envelope import ApiResponse, parse_response
from ._errors import APIConnectionError, APIMWError, APITimeoutError, ClientClosedError

__all__ = ["safe_cause", "send"]


def safe_cause(
    error: BaseException | None,
    secrets: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
) -> BaseException | None:
    """``error`` if it may be kept as a ``__cause__``; ``None`` if anything in its chain could
    show a secret of the request.

    aiohttp's :class:`~aiohttp.ClientResponseError` keeps ``request_info``, whose headers carry
    ``Authorization: Bearer ...``; ``repr()`` of it (error trackers, ``%r`` logging,
    debuggers) would show the token. Such errors, and any whose text holds one of ``secrets``
    or the request's ``Authorization`` value, are dropped from the chain.
    """
    if error is None:
        return None
    needles = [s for s in secrets if s]
    if headers is not None:
        authorization = headers.get("Authorization")
        if authorization:
            needles.append(authorization)
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "request_info", None) is not None:
            return None
        try:
            text = f"{current!r} {current}"
        except Exception:  # a repr that fails cannot be judged: drop it
            return None
        if any(needle in text for needle in needles):
            return None
        pending.extend((current.__cause__, current.__context__))
    return error


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
    failure: APIMWError | None = None
    cause: BaseException | None = None
    try:
        async with session.request(method, url, **kwargs) as resp:
            body = await resp.read()
            status = resp.status
            resp_headers = resp.headers
    except aiohttp.ConnectionTimeoutError as exc:
        failure = APITimeoutError(f"{method} {_target(url)}: connect timed out", sent=False)
        cause = exc
    except asyncio.TimeoutError as exc:
        failure, cause = APITimeoutError(f"{method} {_target(url)}: timed out"), exc
    except aiohttp.ClientConnectorError as exc:
        failure = APIConnectionError(
            f"{method} {_target(url)}: cannot connect ({_reason(exc)})", sent=False
        )
        cause = exc
    except (aiohttp.ClientError, OSError) as exc:
        failure = APIConnectionError(f"{method} {_target(url)}: connection failed ({_reason(exc)})")
        cause = exc
    except RuntimeError as exc:
        if not session.closed:
            raise
        failure, cause = ClientClosedError("the aiohttp session was closed"), exc
    if failure is not None:
        # Raised outside the handler, so the aiohttp error is no implicit __context__: it is
        # the __cause__ only when nothing in it can show a secret of this request.
        raise failure from safe_cause(cause, redact, headers)
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
