"""HMAC-SHA256 signatures of webhook deliveries (``X-APIMW-Signature: sha256=<hex>``)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from .._errors import ConfigurationError

__all__ = ["SIGNATURE_HEADER", "sign", "verify_signature"]

#: The header APIMW puts on every delivery (look it up case-insensitively).
SIGNATURE_HEADER: Final = "X-APIMW-Signature"

_PREFIX: Final = "sha256="
_HEX_LENGTH: Final = 2 * hashlib.sha256().digest_size


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        key = secret.encode("utf-8")
    elif isinstance(secret, (bytes, bytearray, memoryview)):
        key = bytes(secret)
    else:
        raise ConfigurationError("a webhook secret must be str or bytes")
    # HMAC accepts an empty key, so a blank secret (an unset environment variable, say) would
    # make every delivery "verifiable" by anyone who also uses an empty key.
    if not key:
        raise ConfigurationError("a webhook secret must not be empty")
    return key


def _body(raw_body: bytes) -> bytes:
    if isinstance(raw_body, str):
        # The documented Python sample encodes a str; a re-serialised or decoded body no longer
        # matches the bytes that were signed, so refuse it loudly instead of failing silently.
        raise TypeError("raw_body must be the raw request body as bytes, not str")
    if not isinstance(raw_body, (bytes, bytearray, memoryview)):
        raise TypeError("raw_body must be bytes")
    return bytes(raw_body)


def _digest(key: bytes, raw_body: bytes) -> bytes:
    return hmac.new(key, _body(raw_body), hashlib.sha256).digest()


def sign(secret: str | bytes, raw_body: bytes) -> str:
    """The ``X-APIMW-Signature`` value for ``raw_body``: ``"sha256=" + hex(HMAC-SHA256)``.

    Handy for tests that post signed deliveries to your own receiver. A ``str`` secret is
    encoded as UTF-8. :class:`~apimw_async.ConfigurationError` for an empty secret.
    """
    return _PREFIX + hmac.new(_key(secret), _body(raw_body), hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, raw_body: bytes, header_value: str | None) -> bool:
    """Whether ``header_value`` is a valid signature of ``raw_body`` under ``secret``.

    ``raw_body`` must be the exact bytes received, before any JSON parsing. The header is
    ``sha256=<64 hex digits>``; the prefix is case-insensitive, the hex may be upper or lower
    case and surrounding whitespace is ignored. The digests are compared in constant time.

    Returns ``False`` (never raises) for a missing, empty, malformed, wrong-length, non-hex or
    non-ASCII header. A bad *secret* (empty, wrong type) is a programming error and raises
    :class:`~apimw_async.ConfigurationError`; a ``str`` body raises :class:`TypeError`.
    """
    expected = _digest(_key(secret), raw_body)
    if not isinstance(header_value, str):
        return False
    value = header_value.strip()
    if len(value) != len(_PREFIX) + _HEX_LENGTH or not value.isascii():
        return False
    if value[: len(_PREFIX)].lower() != _PREFIX:
        return False
    try:
        # Only ASCII is left, so fromhex cannot see exotic digits; embedded spaces would
        # shorten the result and fail the length check below.
        given = bytes.fromhex(value[len(_PREFIX) :])
    except ValueError:
        return False
    # Comparing raw digests (bytes) rather than text avoids compare_digest's TypeError on
    # non-ASCII str and makes the hex case irrelevant.
    return len(given) == len(expected) and hmac.compare_digest(given, expected)
