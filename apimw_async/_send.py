"""Sending one API request over aiohttp: transport failures become typed errors, the answer
goes through the envelope parser. No retries here (:mod:`._retry` decides those)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ._envelope import ApiResponse, parse_response
from ._errors import APIConnectionError, APITimeoutError, ClientClosedError

__all__ = ["send"]


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
        raise APITimeoutError(f"{method} {_path(url)}: connect timed out", sent=False) from exc
    except asyncio.TimeoutError as exc:
        raise APITimeoutError(f"{method} {_path(url)}: timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise APIConnectionError(
            f"{method} {_path(url)}: cannot connect ({type(exc).__name__})", sent=False
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(
            f"{method} {_path(url)}: connection failed ({type(exc).__name__})"
        ) from exc
    except RuntimeError as exc:
        if session.closed:
            raise ClientClosedError("the aiohttp session was closed") from exc
        raise
    if on_headers is not None:
        on_headers(resp_headers)
    return parse_response(status, resp_headers, body, bearer=bearer, redact=redact)


def _path(url: str | URL) -> str:
    # Error messages name the endpoint, never the query string.
    try:
        return URL(url).path
    except ValueError:
        return "?"
