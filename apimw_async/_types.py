"""Typed inputs and results of the WhatsApp and webhook endpoints, and their client-side checks.

Results are frozen attrs classes built by ``from_data`` class methods, which raise only
:class:`MalformedResponseError` on an answer that does not fit. Results of calls that change
something at the server (a sent message, a registered webhook) are read leniently: only the id
is required, because raising after the server acted would tempt a caller to repeat the call.
Results of reads are checked strictly.

Template-component builders (:class:`TemplateHeaderImage`, :class:`TemplateBody`,
:class:`TemplateUrlButton`) produce the documented send-side shapes, so nobody has to type the
nested dicts; plain mappings are accepted as well.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import attrs

from ._errors import MalformedResponseError, ValidationError
from ._models import _mapping, _optional_str, _require
from ._timestamps import parse_iso8601

__all__ = [
    "MessageInfo",
    "MessageStatus",
    "Pagination",
    "SentMessage",
    "Template",
    "TemplateBody",
    "TemplateComponent",
    "TemplateComponentInput",
    "TemplateCurrency",
    "TemplateHeaderImage",
    "TemplatePage",
    "TemplateStatus",
    "TemplateText",
    "TemplateUrlButton",
    "Webhook",
]


# --- timestamps ------------------------------------------------------------------------------


def parse_timestamp(value: Any, where: str) -> datetime | None:
    """An ISO-8601 timestamp (``2024-01-15T10:30:00Z``) as an aware UTC ``datetime``.

    ``None`` stays ``None``; a time without an offset is taken as UTC (the docs say all times
    are UTC). Anything unreadable is a :class:`MalformedResponseError`.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedResponseError(f"{where}: timestamp is not a string")
    parsed = parse_iso8601(value, utc=True)
    if parsed is None:
        raise MalformedResponseError(f"{where}: timestamp is not an ISO-8601 time in range")
    return parsed


def _lenient_timestamp(value: Any, where: str) -> datetime | None:
    try:
        return parse_timestamp(value, where)
    except MalformedResponseError:
        return None


def _lenient_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if type(value) is str or isinstance(value, str) else None


_NO_TIMES: Mapping[str, Any] = {}


# --- statuses --------------------------------------------------------------------------------


class MessageStatus(str, enum.Enum):
    """A message's delivery status. ``UNKNOWN`` stands for any value the docs do not list
    (the result keeps the server's string in ``raw_status``)."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: str) -> MessageStatus:
        """The member for ``raw`` (any case), ``UNKNOWN`` if there is none."""
        try:
            return cls(raw.strip().lower())
        except ValueError:
            return cls.UNKNOWN


class TemplateStatus(str, enum.Enum):
    """A template's review status; ``UNKNOWN`` for values the docs do not list."""

    APPROVED = "APPROVED"
    PENDING = "PENDING"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, raw: str) -> TemplateStatus:
        """The member for ``raw`` (any case), ``UNKNOWN`` if there is none."""
        try:
            return cls(raw.strip().upper())
        except ValueError:
            return cls.UNKNOWN


# --- results ---------------------------------------------------------------------------------


@attrs.frozen
class SentMessage:
    """The answer to a send (``POST /whatsapp/messages/send`` or ``/template``).

    ``timestamp`` is an aware UTC ``datetime`` (``None`` if the server sent none or an
    unreadable one); ``template`` is set for template sends. The message *was* accepted:
    only a missing ``message_id`` makes this a :class:`MalformedResponseError`.
    """

    message_id: str
    to: str
    status: MessageStatus
    raw_status: str
    timestamp: datetime | None
    template: str | None = None

    @classmethod
    def from_data(cls, data: Any, *, to: str = "", template: str | None = None) -> SentMessage:
        """Build from the envelope's ``data``; ``to``/``template`` fill in what it lacks."""
        where = "whatsapp send"
        if type(data) is not dict and not isinstance(data, Mapping):
            raise MalformedResponseError(
                f"{where}: 'data' is not an object (the message may have been sent)"
            )
        message_id = data.get("message_id")
        if (type(message_id) is not str and not isinstance(message_id, str)) or not message_id:
            raise MalformedResponseError(
                f"{where}: 'message_id' is missing (the message may have been sent)"
            )
        raw_status = _lenient_str(data, "status") or ""
        return cls(
            message_id=message_id,
            to=_lenient_str(data, "to") or to,
            status=MessageStatus.parse(raw_status),
            raw_status=raw_status,
            timestamp=_lenient_timestamp(data.get("timestamp"), where),
            template=_lenient_str(data, "template") or template,
        )


@attrs.frozen
class MessageInfo:
    """``GET /whatsapp/messages/{message_id}``: a message's status and when it changed.

    ``sent_at``, ``delivered_at`` and ``read_at`` are aware UTC datetimes, ``None`` until the
    step happened. An undocumented status gives ``MessageStatus.UNKNOWN`` with the server's
    string in ``raw_status``.
    """

    message_id: str
    to: str | None
    type: str | None
    status: MessageStatus
    raw_status: str
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None

    @classmethod
    def from_data(cls, data: Any) -> MessageInfo:
        """Build from the envelope's ``data``; :class:`MalformedResponseError` if it is off."""
        where = "whatsapp message status"
        body = _mapping(data, where)
        raw_status: str = _require(body, "status", str, where)
        stamps = body.get("timestamps")
        times = (
            _NO_TIMES if stamps is None else _mapping(stamps, "whatsapp message status timestamps")
        )
        return cls(
            message_id=_require(body, "message_id", str, where),
            to=_optional_str(body, "to", where),
            type=_optional_str(body, "type", where),
            status=MessageStatus.parse(raw_status),
            raw_status=raw_status,
            sent_at=parse_timestamp(times.get("sent"), "whatsapp message status timestamps.sent"),
            delivered_at=parse_timestamp(
                times.get("delivered"), "whatsapp message status timestamps.delivered"
            ),
            read_at=parse_timestamp(times.get("read"), "whatsapp message status timestamps.read"),
        )


@attrs.frozen
class TemplateComponent:
    """One component of a listed template (``HEADER``, ``BODY``, ``FOOTER``, ``BUTTONS``...).

    ``type`` is upper-cased as the listing sends it; ``data`` is the whole object as sent.
    """

    type: str
    text: str | None = None
    format: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_data(cls, data: Any) -> TemplateComponent:
        where = "whatsapp template component"
        body = _mapping(data, where)
        kind: str = _require(body, "type", str, where)
        return cls(
            type=kind.upper(),
            text=_optional_str(body, "text", where),
            format=_optional_str(body, "format", where),
            data=dict(body),
        )


@attrs.frozen
class Template:
    """A message template of ``GET /whatsapp/templates``."""

    name: str
    language: str | None
    status: TemplateStatus
    raw_status: str
    category: str | None
    components: tuple[TemplateComponent, ...] = ()

    @property
    def body(self) -> str | None:
        """The text of the ``BODY`` component (with its ``{{1}}`` placeholders), if any."""
        for component in self.components:
            if component.type == "BODY":
                return component.text
        return None

    @classmethod
    def from_data(cls, data: Any) -> Template:
        where = "whatsapp template"
        body = _mapping(data, where)
        raw_status = _optional_str(body, "status", where) or ""
        components = body.get("components")
        if components is None:
            components = []
        if not isinstance(components, list):
            raise MalformedResponseError(f"{where}: 'components' is not a list")
        return cls(
            name=_require(body, "name", str, where),
            language=_optional_str(body, "language", where),
            status=TemplateStatus.parse(raw_status),
            raw_status=raw_status,
            category=_optional_str(body, "category", where),
            components=tuple(TemplateComponent.from_data(c) for c in components),
        )


def _count(value: Any) -> int | None:
    # Tolerant: a count that is not a non-negative integer is treated as unknown.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@attrs.frozen
class Pagination:
    """The ``pagination`` object of a list answer; a field is ``None`` if absent or unusable."""

    total: int | None
    page: int | None
    per_page: int | None

    @classmethod
    def from_data(cls, data: Any) -> Pagination | None:
        """``None`` if the answer had no pagination object."""
        if data is None:
            return None
        body = _mapping(data, "pagination")
        return cls(
            total=_count(body.get("total")),
            page=_count(body.get("page")),
            per_page=_count(body.get("per_page")),
        )


@attrs.frozen
class TemplatePage:
    """One page of ``GET /whatsapp/templates``: the templates and the ``pagination`` object."""

    templates: tuple[Template, ...]
    pagination: Pagination | None

    @classmethod
    def from_data(cls, data: Any) -> TemplatePage:
        where = "whatsapp templates"
        body = _mapping(data, where)
        templates = body.get("templates")
        if templates is None:
            templates = []
        if not isinstance(templates, list):
            raise MalformedResponseError(f"{where}: 'templates' is not a list")
        return cls(
            templates=tuple(Template.from_data(t) for t in templates),
            pagination=Pagination.from_data(body.get("pagination")),
        )


@attrs.frozen
class Webhook:
    """A registered webhook (``POST /webhooks``, 201).

    ``secret`` is the signing secret given at registration (the server does not echo it); it
    never appears in ``repr``. The registration *was* accepted: only a missing ``id`` makes the
    answer a :class:`MalformedResponseError`; other missing fields keep the requested values.
    """

    id: str
    url: str
    events: tuple[str, ...]
    active: bool
    created_at: datetime | None
    secret: str | None = attrs.field(default=None, repr=False, eq=False)

    @classmethod
    def from_data(
        cls,
        data: Any,
        *,
        url: str = "",
        events: Sequence[str] = (),
        active: bool = True,
        secret: str | None = None,
    ) -> Webhook:
        """Build from the envelope's ``data``; the keywords fill in what it lacks."""
        where = "webhook register"
        if type(data) is not dict and not isinstance(data, Mapping):
            raise MalformedResponseError(
                f"{where}: 'data' is not an object (the webhook may have been registered)"
            )
        webhook_id = data.get("id")
        if not isinstance(webhook_id, str) or not webhook_id:
            raise MalformedResponseError(
                f"{where}: 'id' is missing (the webhook may have been registered)"
            )
        got_events = data.get("events")
        if isinstance(got_events, list) and all(isinstance(e, str) for e in got_events):
            events = got_events
        got_active = data.get("active")
        return cls(
            id=webhook_id,
            url=_lenient_str(data, "url") or url,
            events=tuple(events),
            active=got_active if isinstance(got_active, bool) else active,
            created_at=_lenient_timestamp(data.get("created_at"), where),
            secret=secret,
        )


# --- template component builders -------------------------------------------------------------


def _text_value(name: str) -> Any:
    def check(_: Any, __: Any, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{name} must be a non-empty string", field=name)

    return check


@attrs.frozen
class TemplateText:
    """A text parameter: ``{"type": "text", "text": ...}``."""

    text: str = attrs.field(validator=_text_value("text"))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}


def _amount_1000(_: Any, __: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("amount_1000 must be an integer", field="amount_1000")


@attrs.frozen
class TemplateCurrency:
    """A currency parameter: ``{"type": "currency", "currency": {"code", "amount_1000"}}``.

    ``amount_1000`` is the amount times 1000 (``99990`` is 99.99); :meth:`of` computes it from
    a decimal amount. ``fallback_value`` (the text shown where the currency cannot be
    rendered; WhatsApp's Cloud API knows it, the APIMW docs do not show it) is sent only if set.

    >>> TemplateCurrency.of("USD", "99.99")
    TemplateCurrency(code='USD', amount_1000=99990, fallback_value=None)
    """

    code: str = attrs.field(validator=_text_value("code"))
    amount_1000: int = attrs.field(validator=_amount_1000)
    fallback_value: str | None = None

    @classmethod
    def of(
        cls, code: str, amount: Decimal | int | str, *, fallback_value: str | None = None
    ) -> TemplateCurrency:
        """From an amount in currency units (``Decimal("99.99")``, ``"99.99"`` or ``99``)."""
        if isinstance(amount, bool) or not isinstance(amount, (Decimal, int, str)):
            raise ValidationError("amount must be a Decimal, int or str", field="amount")
        try:
            thousandths = (Decimal(amount) * 1000).to_integral_value(ROUND_HALF_EVEN)
        except (InvalidOperation, ValueError):
            raise ValidationError("amount is not a number", field="amount") from None
        if not thousandths.is_finite():
            raise ValidationError("amount is not a finite number", field="amount")
        return cls(code, int(thousandths), fallback_value)

    def to_dict(self) -> dict[str, Any]:
        currency: dict[str, Any] = {"code": self.code, "amount_1000": self.amount_1000}
        if self.fallback_value is not None:
            currency["fallback_value"] = self.fallback_value
        return {"type": "currency", "currency": currency}


def _image_link(_: Any, __: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError("link must be a non-empty URL", field="link")


@attrs.frozen
class TemplateHeaderImage:
    """A header with an image:
    ``{"type": "header", "parameters": [{"type": "image", "image": {"link": ...}}]}``."""

    link: str = attrs.field(validator=_image_link)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "header", "parameters": [{"type": "image", "image": {"link": self.link}}]}


@attrs.frozen(init=False)
class TemplateBody:
    """The body parameters, in placeholder order (``{{1}}``, ``{{2}}``, ...).

    Strings become text parameters:

    >>> TemplateBody("Ann", TemplateCurrency("USD", 99990)).to_dict()["parameters"][0]
    {'type': 'text', 'text': 'Ann'}
    """

    parameters: tuple[TemplateText | TemplateCurrency, ...]

    def __init__(self, *parameters: str | TemplateText | TemplateCurrency) -> None:
        converted: list[TemplateText | TemplateCurrency] = []
        for parameter in parameters:
            if isinstance(parameter, str):
                converted.append(TemplateText(parameter))
            elif isinstance(parameter, (TemplateText, TemplateCurrency)):
                converted.append(parameter)
            else:
                raise ValidationError(
                    "body parameters are str, TemplateText or TemplateCurrency",
                    field="parameters",
                )
        self.__attrs_init__(tuple(converted))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "body", "parameters": [p.to_dict() for p in self.parameters]}


def _button_index(_: Any, __: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("index must be a non-negative integer", field="index")


@attrs.frozen
class TemplateUrlButton:
    """The variable part of a URL button at ``index``:
    ``{"type": "button", "sub_type": "url", "index": 0, "parameters": [{"type": "text", ...}]}``.
    """

    index: int = attrs.field(validator=_button_index)
    text: str = attrs.field(validator=_text_value("text"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "button",
            "sub_type": "url",
            "index": self.index,
            "parameters": [{"type": "text", "text": self.text}],
        }


#: What ``send_template(components=[...])`` accepts: the builders or plain mappings.
TemplateComponentInput = TemplateHeaderImage | TemplateBody | TemplateUrlButton | Mapping[str, Any]


def components_payload(components: Iterable[TemplateComponentInput]) -> list[dict[str, Any]]:
    """The JSON list for ``components``; builders are expanded, mappings copied."""
    if isinstance(components, (str, bytes, Mapping)) or not isinstance(components, Iterable):
        raise ValidationError("components must be a list of components", field="components")
    payload: list[dict[str, Any]] = []
    for component in components:
        if isinstance(component, (TemplateHeaderImage, TemplateBody, TemplateUrlButton)):
            payload.append(component.to_dict())
        elif isinstance(component, Mapping):
            payload.append(dict(component))
        else:
            raise ValidationError(
                "each component is a TemplateHeaderImage, TemplateBody, TemplateUrlButton or "
                "a mapping",
                field="components",
            )
    return payload
