"""Typed webhook events, parsed tolerantly because APIMW does not document the payload schema.

What the docs give (Gap 20): event names ``message.sent``, ``message.delivered``,
``message.read``, ``message.received`` (plus ``message.failed``, a documented message status)
and the ``{"type": "webhook.verification", "challenge": "..."}`` handshake. The envelope is
guessed from common practice and read leniently:

* event type: ``type``, else ``event`` (when both are strings, one naming a known event wins);
* event id: ``event_id``, else ``id`` (a string or an integer);
* time: ``timestamp``, else ``created_at`` (ISO-8601; ``Z`` and offsets honoured, a naive time
  is taken as UTC as the docs say all times are; a number is Unix seconds), else the same keys
  inside ``data``; unparseable or absent → ``None``;
* payload: ``data`` when it is an object, else the remaining top-level fields.

A missing or odd field never fails the parse: it becomes ``None`` and the original stays in
``raw``. Only a body that is not a JSON object (or a handshake without a challenge) is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final

import attrs

from .._errors import APIMWError
from .._timestamps import parse_iso8601

__all__ = [
    "MESSAGE_EVENT_TYPES",
    "VERIFICATION_EVENT_TYPE",
    "MessageEvent",
    "UnknownEvent",
    "VerificationChallenge",
    "WebhookEvent",
    "WebhookPayloadError",
    "parse_event",
    "parse_event_data",
]

#: The ownership handshake APIMW sends after a webhook is registered.
VERIFICATION_EVENT_TYPE: Final = "webhook.verification"

#: Event types parsed as :class:`MessageEvent`.
MESSAGE_EVENT_TYPES: Final = frozenset(
    {"message.sent", "message.delivered", "message.read", "message.failed", "message.received"}
)

_INBOUND: Final = "message.received"
_KNOWN_TYPES: Final = MESSAGE_EVENT_TYPES | {VERIFICATION_EVENT_TYPE}
_ENVELOPE_KEYS: Final = frozenset({"id", "event_id", "type", "event", "timestamp", "created_at"})
_TIME_KEYS: Final = ("timestamp", "created_at")


class WebhookPayloadError(APIMWError):
    """A webhook delivery whose body cannot be interpreted: not JSON, or not a JSON object.

    The message never contains the body itself.
    """


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """Base class of every parsed delivery.

    ``type`` is the event name (``""`` if the delivery had none), ``id`` the event id used for
    de-duplication (``None`` if absent), ``timestamp`` an aware :class:`~datetime.datetime` or
    ``None``, ``data`` the event payload and ``raw`` the whole decoded JSON object, untouched.
    """

    type: str
    id: str | None = None
    timestamp: datetime | None = None
    # Hashing skips the dicts (unhashable); equal events still hash equally.
    data: Mapping[str, Any] = attrs.field(factory=dict, repr=False, hash=False)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, hash=False)


@attrs.frozen(kw_only=True)
class MessageEvent(WebhookEvent):
    """A ``message.*`` event: a status update of a sent message, or an inbound message.

    Status updates (``message.sent``/``delivered``/``read``/``failed``) carry ``message_id``
    and ``status`` (taken from the event name when the payload has no ``status``); inbound
    messages (``message.received``) carry ``from_`` and ``text``. Fields the payload lacks are
    ``None``; ``error`` is a best-effort failure description (its shape is undocumented).
    """

    message_id: str | None = None
    from_: str | None = None
    to: str | None = None
    status: str | None = None
    text: str | None = None
    error: str | None = None

    @property
    def is_inbound(self) -> bool:
        """Whether this is a message received from a user (``message.received``)."""
        return self.type == _INBOUND


@attrs.frozen(kw_only=True)
class VerificationChallenge(WebhookEvent):
    """The ``webhook.verification`` handshake; answer it by echoing ``challenge``."""

    challenge: str


@attrs.frozen(kw_only=True)
class UnknownEvent(WebhookEvent):
    """An event of a type this SDK does not model; inspect ``type``, ``data`` and ``raw``."""


def parse_event(raw_body: bytes) -> WebhookEvent:
    """Decode a delivery body (the raw request bytes) into a typed event.

    Returns a :class:`MessageEvent`, :class:`VerificationChallenge` or :class:`UnknownEvent`;
    raises :class:`WebhookPayloadError` (only) when the body is not a JSON object.
    """
    if isinstance(raw_body, (bytearray, memoryview)):
        raw_body = bytes(raw_body)
    try:
        payload = json.loads(raw_body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError; absurdly deep nesting
        # exhausts the decoder's recursion instead.
        raise WebhookPayloadError("webhook body is not valid JSON") from exc
    return parse_event_data(payload)


def parse_event_data(payload: object) -> WebhookEvent:
    """Like :func:`parse_event`, for an already decoded JSON value (e.g. a stored ``raw``)."""
    if not isinstance(payload, Mapping):
        raise WebhookPayloadError("webhook body is not a JSON object")
    raw: Mapping[str, Any] = payload
    data_field = raw.get("data")
    if isinstance(data_field, Mapping):
        data: Mapping[str, Any] = data_field
    else:
        data = {k: v for k, v in raw.items() if k not in _ENVELOPE_KEYS}
    common: dict[str, Any] = {
        "type": _event_type(raw),
        "id": _event_id(raw),
        "timestamp": _first_time(raw) or _first_time(data),
        "data": data,
        "raw": raw,
    }
    event_type = common["type"]
    if event_type == VERIFICATION_EVENT_TYPE:
        challenge = _scalar(raw.get("challenge"))
        if challenge is None:
            challenge = _scalar(data.get("challenge"))
        if challenge is None:
            raise WebhookPayloadError("webhook.verification delivery without a challenge")
        return VerificationChallenge(challenge=challenge, **common)
    if event_type in MESSAGE_EVENT_TYPES:
        return _message_event(event_type, data, raw, common)
    return UnknownEvent(**common)


def _message_event(
    event_type: str, data: Mapping[str, Any], raw: Mapping[str, Any], common: dict[str, Any]
) -> MessageEvent:
    nested = data.get("message")
    # Nested ``data.message`` objects (WhatsApp Cloud style) are searched after ``data``, and
    # the top level last, so a flat envelope works as well as a wrapped one.
    sources: list[Mapping[str, Any]] = [data]
    if isinstance(nested, Mapping):
        sources.append(nested)
    sources.append(raw)

    def pick(*keys: str) -> str | None:
        for source in sources:
            for key in keys:
                value = _scalar(source.get(key))
                if value is not None:
                    return value
        return None

    message_id = pick("message_id", "wamid")
    if message_id is None and isinstance(nested, Mapping):
        message_id = _scalar(nested.get("id"))
    status = pick("status")
    if status is None and event_type != _INBOUND:
        status = event_type.partition(".")[2]
    text = None
    for source in sources:
        for key in ("text", "body", "message", "content"):
            text = _text(source.get(key))
            if text is not None:
                break
        if text is not None:
            break
    error = None
    for key in ("error", "reason", "error_message", "failure_reason"):
        error = _error(data.get(key))
        if error is not None:
            break
    return MessageEvent(
        message_id=message_id,
        from_=pick("from", "from_number", "sender"),
        to=pick("to", "recipient"),
        status=status,
        text=text,
        error=error,
        **common,
    )


def _event_type(raw: Mapping[str, Any]) -> str:
    names = [v for v in (raw.get("type"), raw.get("event")) if isinstance(v, str) and v]
    for name in names:
        if name in _KNOWN_TYPES:
            return name
    return names[0] if names else ""


def _event_id(raw: Mapping[str, Any]) -> str | None:
    for key in ("event_id", "id"):
        value = _scalar(raw.get(key))
        if value:
            return value
    return None


def _scalar(value: Any) -> str | None:
    """A string, or an integer id as a string; anything else is treated as absent."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _text(value: Any, depth: int = 0) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and depth < 2:
        for key in ("body", "text"):
            found = _text(value.get(key), depth + 1)
            if found is not None:
                return found
    return None


def _error(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("message", "title", "code"):
            found = _scalar(value.get(key))
            if found is not None:
                return found
    return None


def _first_time(source: Mapping[str, Any]) -> datetime | None:
    for key in _TIME_KEYS:
        parsed = _parse_timestamp(source.get(key))
        if parsed is not None:
            return parsed
    return None


def _parse_timestamp(value: Any) -> datetime | None:
    """An aware datetime from an ISO-8601 string or Unix seconds; ``None`` if not parseable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    return parse_iso8601(value)
