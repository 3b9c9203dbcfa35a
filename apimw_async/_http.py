"""The HTTP transport, as one import: the names of its four modules.

- :mod:`._urls`: which base URLs are accepted, which hosts are loopback;
- :mod:`._envelope`: the one envelope parser, :class:`ApiResponse`, :class:`RateLimitInfo`;
- :mod:`._send`: one request over aiohttp, failures as typed errors;
- :mod:`._sessions` and :mod:`._loops`: sessions (and any other state) per event loop.

Only these modules talk to aiohttp for API calls and only :mod:`._envelope` turns an HTTP
answer into data or a typed error; everything above deals in parsed ``data`` and
:mod:`apimw_async._errors` exceptions.
"""

from __future__ import annotations

from ._envelope import ApiResponse, RateLimitInfo, loads, parse_response, parse_retry_after
from ._loops import PerLoop, on_loop_shutdown
from ._send import send
from ._sessions import SessionProvider
from ._urls import is_loopback, normalize_base_url

__all__ = [
    "ApiResponse",
    "PerLoop",
    "RateLimitInfo",
    "SessionProvider",
    "is_loopback",
    "loads",
    "normalize_base_url",
    "on_loop_shutdown",
    "parse_response",
    "parse_retry_after",
    "send",
]
