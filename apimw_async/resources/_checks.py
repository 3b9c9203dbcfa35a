"""Client-side checks of the rules the docs state, run before a request is sent.

Each raises :class:`ValidationError` naming the argument. They are switched off as a whole by
``Client(..., validate=False)``; the server stays the authority either way.
"""

from __future__ import annotations

import re
from typing import Any, Final

from yarl import URL

from .._errors import ValidationError
from .._urls import is_loopback

__all__ = [
    "MAX_TEXT_LENGTH",
    "check_events",
    "check_name",
    "check_phone",
    "check_text",
    "check_webhook_url",
]

#: The documented maximum length of a text message. The docs say "characters" without saying
#: how they are counted; code points (``len()``) are counted, so a message is never refused
#: here that the server might take (an emoji is one character, not two UTF-16 units).
MAX_TEXT_LENGTH: Final = 4096

# E.164: "+", a country code not starting with 0, at most 15 digits in all. Seven digits is the
# shortest number in use (e.g. +290 XXXX). ASCII digits only: no spaces, dashes or brackets.
_E164: Final = re.compile(r"\+[1-9][0-9]{6,14}", re.ASCII)


def check_phone(value: Any, field: str = "to") -> None:
    """E.164, e.g. ``+1234567890`` (the number itself is not echoed into the message)."""
    if not isinstance(value, str) or not _E164.fullmatch(value):
        raise ValidationError(
            f"{field} must be an E.164 phone number such as +1234567890: '+', country code "
            "and number, 7 to 15 digits, no spaces or punctuation",
            field=field,
        )


def check_text(value: Any, field: str = "message") -> None:
    """A non-empty string of at most :data:`MAX_TEXT_LENGTH` characters."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field} must be a non-empty string", field=field)
    if len(value) > MAX_TEXT_LENGTH:
        raise ValidationError(
            f"{field} is {len(value)} characters long; the limit is {MAX_TEXT_LENGTH}",
            field=field,
        )


def check_name(value: Any, field: str) -> None:
    """A non-empty string (template name, language code, ...)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} must be a non-empty string", field=field)


def check_webhook_url(value: Any, *, allow_loopback_http: bool) -> None:
    """An absolute HTTPS URL without credentials.

    Plain ``http`` is accepted only for a loopback host, and only when
    ``allow_loopback_http`` (the client itself talks plain http: a loopback base URL such as
    the fake server's, or ``allow_insecure_http=True``).
    """
    if not isinstance(value, str) or not value:
        raise ValidationError("url must be a non-empty string", field="url")
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValidationError("url is not a URL", field="url") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValidationError("url must be an absolute https:// URL", field="url")
    if url.user or url.password:
        raise ValidationError("url must not carry credentials", field="url")
    if url.scheme == "http" and not (allow_loopback_http and is_loopback(url.host)):
        raise ValidationError(
            "url must use https: APIMW delivers webhooks only to HTTPS endpoints (plain http "
            "is accepted for a loopback host when the client itself talks plain http to a "
            "loopback server or allows insecure http)",
            field="url",
        )


def check_events(value: Any) -> None:
    """A non-empty list of non-empty event names (``message.delivered``, ...)."""
    if not isinstance(value, list) or not value:
        raise ValidationError(
            "events must be a non-empty list of event names, e.g. ['message.delivered']",
            field="events",
        )
    if not all(isinstance(e, str) and e.strip() for e in value):
        raise ValidationError("every event must be a non-empty string", field="events")
