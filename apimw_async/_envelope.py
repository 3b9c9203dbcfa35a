"""The one place an HTTP answer becomes data or a typed error: the APIMW envelope parser.

Also the response-side values every layer above reads: :class:`ApiResponse`,
:class:`RateLimitInfo` and ``Retry-After``.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._errors import APIStatusError, MalformedResponseError, error_from_status

__all__ = ["ApiResponse", "RateLimitInfo", "loads", "parse_response", "parse_retry_after"]


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


_NOT_JSON: Any = object()


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
        # (not raised in here: the decoder's error, the implicit __context__, holds the body,
        # which may hold a token)
        payload = _NOT_JSON
    if payload is _NOT_JSON:
        raise MalformedResponseError(f"HTTP {status} with a body that is not JSON", status=status)
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
