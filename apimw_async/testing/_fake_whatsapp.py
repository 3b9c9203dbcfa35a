"""The WhatsApp endpoints of the fake server: send, send template, message status, templates.

A mixin of :class:`~._fake_server.FakeAPIMW`; see its docstring for the options. Choices where
the docs are silent (Gaps 10, 15-19):

* ``to`` must be E.164 on both sends: ``+``, then 8-15 ASCII digits, the first not ``0``
  (``400 INVALID_PHONE_NUMBER``, ``The phone number format is invalid``). A missing or
  non-string ``to`` is ``400 INVALID_REQUEST``.
* ``message``: a string of 1-4096 characters (Python ``len``, i.e. code points).
* Templates are looked up by ``name`` *and* ``language``: an unknown name or a name without
  that translation is ``400 TEMPLATE_NOT_FOUND``; a ``PENDING``/``REJECTED`` one is
  ``400 TEMPLATE_NOT_APPROVED``. ``components`` are checked for shape only (lower-case
  ``type`` header/body/button, a button's ``sub_type`` and ``index``, a currency's ``code`` and
  integer ``amount_1000``), not against the template's placeholders.
* Unknown ``message_id`` on ``GET /whatsapp/messages/{id}``: ``404 MESSAGE_NOT_FOUND``.
* ``GET /whatsapp/templates`` accepts the undocumented ``page`` (1-based, default 1) and
  ``per_page`` (default 20; above 100 is served as 100), and ``status`` must be one of the
  documented values; an unknown ``category`` just matches nothing.
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
from aiohttp import web

from ._fake_base import (
    _endpoint,
    _error,
    _FakeCore,
    _invalid,
    _iso,
    _ok,
    _Reply,
)
from ._fake_templates import DEFAULT_TEMPLATES

#: The ``message_id_style`` values: realistic URL-safe ids, or ids with ``/``, ``+`` and ``=``.
MESSAGE_ID_STYLES: Final = frozenset({"urlsafe", "path-unsafe"})
#: The ``pagination_quirk`` values (besides ``None``, a well-behaved server).
PAGINATION_QUIRKS: Final = frozenset({"total_lies_high", "ignores_page", "no_pagination"})
#: The template statuses the docs list, and the filter values ``status`` accepts.
TEMPLATE_STATUSES: Final = ("APPROVED", "PENDING", "REJECTED")
MAX_MESSAGE_LENGTH: Final = 4096
DEFAULT_PER_PAGE: Final = 20
MAX_PER_PAGE: Final = 100

_E164: Final = re.compile(r"\+[1-9][0-9]{7,14}")
_INVALID_PHONE: Final = _error(400, "INVALID_PHONE_NUMBER", "The phone number format is invalid")
_MISSING_TO: Final = _invalid(
    "to is required: the recipient's phone number in E.164 format, e.g. +1234567890"
)
_COMPONENT_TYPES: Final = ("header", "body", "button")
_MEDIA_PARAMETERS: Final = ("image", "document", "video")
_PARAMETER_TYPES: Final = ("text", "currency", "date_time", *_MEDIA_PARAMETERS, "payload")


@attrs.define(eq=False)
class FakeMessage:
    """A message the fake server accepted; its status follows from the clock.

    ``status_at(monotonic)`` is ``sent`` until ``delivered_after`` seconds have passed since
    ``sent_monotonic``, then ``delivered`` (or ``failed`` when ``fails``), then ``read`` after
    ``read_after`` seconds. ``None`` delays mean "never".
    """

    id: str
    to: str
    type: str
    """``"text"`` or ``"template"``."""
    body: dict[str, Any]
    """The request body as the server received it."""
    sent_at: float
    """Wall-clock epoch seconds of the send."""
    sent_monotonic: float
    delivered_after: float | None
    read_after: float | None
    fails: bool

    def status_at(self, monotonic: float) -> str:
        """``sent``, ``delivered``, ``read`` or ``failed`` at ``monotonic`` on the server clock."""
        elapsed = monotonic - self.sent_monotonic
        delivered = self.delivered_after
        if delivered is None or elapsed < delivered:
            return "sent"
        if self.fails:
            return "failed"
        read = self.read_after
        if read is None or elapsed < max(read, delivered):
            return "delivered"
        return "read"

    def timestamps_at(self, monotonic: float) -> dict[str, str | None]:
        """The ``timestamps`` object of the status endpoint at ``monotonic``."""
        status = self.status_at(monotonic)
        delivered = read = None
        if status in ("delivered", "read") and self.delivered_after is not None:
            delivered = _iso(self.sent_at + self.delivered_after)
            if status == "read" and self.read_after is not None:
                read = _iso(self.sent_at + max(self.read_after, self.delivered_after))
        return {"sent": _iso(self.sent_at), "delivered": delivered, "read": read}


def _new_message_id(style: str) -> str:
    """``wamid.HBgL…``; ``path-unsafe`` ids contain ``/``, ``+`` and end in ``==``."""
    if style == "path-unsafe":
        core = base64.b64encode(secrets.token_bytes(30)).decode("ascii")
        return f"wamid.HBgL{core[:12]}/{core[12:24]}+{core[24:]}=="
    return "wamid.HBgL" + base64.urlsafe_b64encode(secrets.token_bytes(36)).decode("ascii")


def _recipient(body: dict[str, Any]) -> tuple[str, _Reply | None]:
    to = body.get("to")
    if not isinstance(to, str):
        return "", _MISSING_TO
    if _E164.fullmatch(to) is None:
        return "", _INVALID_PHONE
    return to, None


def _optional_bool(body: dict[str, Any], name: str, default: bool) -> bool | None:
    value = body.get(name)
    if value is None:
        return default
    return value if isinstance(value, bool) else None


def _is_index(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.isascii() and value.isdecimal()


def _parameter_problem(where: str, parameter: Any) -> str | None:
    if not isinstance(parameter, dict):
        return f"{where} must be an object"
    kind = parameter.get("type")
    if kind not in _PARAMETER_TYPES:
        return f"{where}.type must be one of {', '.join(_PARAMETER_TYPES)}"
    if kind == "text":
        if not isinstance(parameter.get("text"), str):
            return f"{where}.text must be a string"
    elif kind == "currency":
        currency = parameter.get("currency")
        amount = currency.get("amount_1000") if isinstance(currency, dict) else None
        if (
            not isinstance(currency, dict)
            or not isinstance(currency.get("code"), str)
            or not currency["code"]
            or not isinstance(amount, int)
            or isinstance(amount, bool)
        ):
            return f"{where}.currency needs a code (e.g. USD) and an integer amount_1000"
    elif kind == "date_time":
        if not isinstance(parameter.get("date_time"), dict):
            return f"{where}.date_time must be an object"
    elif kind == "payload":
        if not isinstance(parameter.get("payload"), str):
            return f"{where}.payload must be a string"
    else:
        media = parameter.get(kind)
        if not isinstance(media, dict) or not any(
            isinstance(media.get(key), str) and media[key] for key in ("link", "id")
        ):
            return f"{where}.{kind} needs a link or an id"
    return None


def _components_problem(components: Any) -> str | None:
    """Why ``components`` is not a list of WhatsApp-style send components, or ``None``."""
    if not isinstance(components, list):
        return "components must be an array"
    for i, component in enumerate(components):
        where = f"components[{i}]"
        if not isinstance(component, dict):
            return f"{where} must be an object"
        kind = component.get("type")
        if kind not in _COMPONENT_TYPES:
            return f"{where}.type must be one of header, body, button (lower-case)"
        if kind == "button":
            sub_type = component.get("sub_type")
            if not isinstance(sub_type, str) or not sub_type:
                return f"{where}.sub_type is required for a button (e.g. url, quick_reply)"
            if not _is_index(component.get("index")):
                return f"{where}.index is required for a button: its position, from 0"
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list):
            return f"{where}.parameters must be an array"
        for j, parameter in enumerate(parameters):
            problem = _parameter_problem(f"{where}.parameters[{j}]", parameter)
            if problem is not None:
                return problem
    return None


def _query_int(value: str | None, default: int) -> int | None:
    """A positive integer query parameter; ``None`` if malformed."""
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdecimal()) or len(value) > 9:
        return None
    number = int(value)
    return number if number >= 1 else None


def _templates_copy(templates: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for template in templates:
        missing = {"name", "language", "status", "category"} - set(template)
        if missing:
            raise ValueError(f"template {dict(template)!r} lacks {sorted(missing)}")
        result.append(copy.deepcopy(dict(template)))
    return result


class _WhatsAppMixin(_FakeCore):
    """Messages, their statuses over time, and the template catalogue."""

    delivery_delay: float | None
    read_delay: float | None
    failing_numbers: tuple[str, ...]

    def _init_whatsapp(
        self,
        *,
        templates: Iterable[Mapping[str, Any]] | None,
        delivery_delay: float | None,
        read_delay: float | None,
        failing_numbers: Iterable[str],
        message_id_style: str,
        pagination_quirk: str | None,
    ) -> None:
        self.templates: list[dict[str, Any]] = _templates_copy(
            DEFAULT_TEMPLATES if templates is None else templates
        )
        """The catalogue (listing shape); may be changed while running."""
        self.delivery_delay = delivery_delay
        self.read_delay = read_delay
        self.failing_numbers = tuple(failing_numbers)
        self.message_id_style = message_id_style
        self.pagination_quirk = pagination_quirk
        self._messages: dict[str, FakeMessage] = {}

    @property
    def message_id_style(self) -> str:
        """``"urlsafe"`` (default) or ``"path-unsafe"`` (ids with ``/``, ``+`` and ``=``)."""
        return self._message_id_style

    @message_id_style.setter
    def message_id_style(self, style: str) -> None:
        if style not in MESSAGE_ID_STYLES:
            raise ValueError(f"message_id_style must be one of {sorted(MESSAGE_ID_STYLES)}")
        self._message_id_style = style

    @property
    def pagination_quirk(self) -> str | None:
        """``None`` or one of :data:`PAGINATION_QUIRKS` (how ``templates`` misbehaves)."""
        return self._pagination_quirk

    @pagination_quirk.setter
    def pagination_quirk(self, quirk: str | None) -> None:
        if quirk is not None and quirk not in PAGINATION_QUIRKS:
            raise ValueError(f"pagination_quirk must be None or one of {sorted(PAGINATION_QUIRKS)}")
        self._pagination_quirk = quirk

    @property
    def messages(self) -> Mapping[str, FakeMessage]:
        """Every message accepted so far, by id, in sending order (read-only view)."""
        return MappingProxyType(self._messages)

    def message_status(self, message_id: str) -> str:
        """The status ``GET /whatsapp/messages/{id}`` would answer now (``KeyError`` if none)."""
        return self._messages[message_id].status_at(self.clock.monotonic())

    def _record_message(self, to: str, kind: str, body: dict[str, Any]) -> FakeMessage:
        clock = self.clock
        wall, now = clock.time(), clock.monotonic()
        delivered_after, read_after = self.delivery_delay, self.read_delay
        record = FakeMessage(
            id=_new_message_id(self._message_id_style),
            to=to,
            type=kind,
            body=body,
            sent_at=wall,
            sent_monotonic=now,
            delivered_after=delivered_after,
            read_after=read_after,
            fails=bool(self.failing_numbers) and to.endswith(self.failing_numbers),
        )
        self._messages[record.id] = record
        self.stats.messages_sent += 1

        def data(status: str, at: float) -> dict[str, Any]:
            return {"message_id": record.id, "to": to, "status": status, "timestamp": _iso(at)}

        # Status events are scheduled only when a webhook wants them: without webhooks the
        # server never sleeps on the clock (a FakeClock shared with the SDK stays quiet).
        self._message_event("message.sent", data("sent", wall), wall)
        if delivered_after is not None:
            status = "failed" if record.fails else "delivered"
            at = wall + delivered_after
            if self._wants_message_events(f"message.{status}"):
                self._schedule_message_event(
                    now + delivered_after, f"message.{status}", data(status, at), at
                )
            if (
                not record.fails
                and read_after is not None
                and self._wants_message_events("message.read")
            ):
                after = max(read_after, delivered_after)
                self._schedule_message_event(
                    now + after, "message.read", data("read", wall + after), wall + after
                )
        return record

    # --- endpoints ---------------------------------------------------------------------------

    @_endpoint("send", "POST", "/whatsapp/messages/send")
    async def _handle_send(self, request: web.Request) -> _Reply:
        """``POST /whatsapp/messages/send``: a text (``to``, ``message``, ``preview_url``)."""
        body = await self._authorized_body(request)
        if isinstance(body, _Reply):
            return body
        to, failure = _recipient(body)
        if failure is not None:
            return failure
        message = body.get("message")
        if not isinstance(message, str):
            return _invalid("message is required and must be a string")
        if not message:
            return _invalid("message must not be empty")
        if len(message) > MAX_MESSAGE_LENGTH:
            return _invalid(
                f"message must be at most {MAX_MESSAGE_LENGTH} characters (got {len(message)})"
            )
        if _optional_bool(body, "preview_url", False) is None:
            return _invalid("preview_url must be a boolean")
        record = self._record_message(to, "text", body)
        return _ok(
            {
                "message_id": record.id,
                "to": to,
                "status": "sent",
                "timestamp": _iso(record.sent_at),
            }
        )

    @_endpoint("template", "POST", "/whatsapp/messages/template")
    async def _handle_template(self, request: web.Request) -> _Reply:
        """``POST /whatsapp/messages/template``: an approved template in one of its languages."""
        body = await self._authorized_body(request)
        if isinstance(body, _Reply):
            return body
        to, failure = _recipient(body)
        if failure is not None:
            return failure
        name = body.get("template")
        if not isinstance(name, str) or not name:
            return _invalid("template is required: the name of an approved template")
        language = body.get("language")
        if not isinstance(language, str) or not language:
            return _invalid('language is required: the template\'s language code, e.g. "en"')
        components = body.get("components")
        if components is not None:
            problem = _components_problem(components)
            if problem is not None:
                return _invalid(problem)
        translations = [t for t in self.templates if t.get("name") == name]
        if not translations:
            return _error(400, "TEMPLATE_NOT_FOUND", f"Template '{name}' does not exist")
        template = next((t for t in translations if t.get("language") == language), None)
        if template is None:
            languages = ", ".join(sorted(str(t.get("language")) for t in translations))
            return _error(
                400,
                "TEMPLATE_NOT_FOUND",
                f"Template '{name}' does not exist in language '{language}' "
                f"(available: {languages})",
            )
        status = template.get("status")
        if status != "APPROVED":
            return _error(
                400,
                "TEMPLATE_NOT_APPROVED",
                f"Template '{name}' ({language}) is not approved (status: {status})",
            )
        record = self._record_message(to, "template", body)
        return _ok(
            {
                "message_id": record.id,
                "to": to,
                "template": name,
                "status": "sent",
                "timestamp": _iso(record.sent_at),
            }
        )

    @_endpoint("status", "GET", "/whatsapp/messages/{message_id}")
    async def _handle_status(self, request: web.Request) -> _Reply:
        """``GET /whatsapp/messages/{message_id}``: the id URL-decoded, status from the clock."""
        failure = self._authenticate(request)
        if failure is not None:
            return failure
        message_id = request.match_info["message_id"]
        record = self._messages.get(message_id)
        if record is None:
            return _error(404, "MESSAGE_NOT_FOUND", f"Message {message_id!r} not found")
        now = self.clock.monotonic()
        return _ok(
            {
                "message_id": record.id,
                "to": record.to,
                "type": record.type,
                "status": record.status_at(now),
                "timestamps": record.timestamps_at(now),
            }
        )

    @_endpoint("templates", "GET", "/whatsapp/templates")
    async def _handle_templates(self, request: web.Request) -> _Reply:
        """``GET /whatsapp/templates``: filtered by ``status``/``category``, paginated."""
        failure = self._authenticate(request)
        if failure is not None:
            return failure
        query = request.query
        status = query.get("status") or None
        if status is not None and status not in TEMPLATE_STATUSES:
            return _invalid(f"status must be one of {', '.join(TEMPLATE_STATUSES)}")
        category = query.get("category") or None
        page = _query_int(query.get("page"), 1)
        if page is None:
            return _invalid("page must be a positive integer")
        per_page = _query_int(query.get("per_page"), DEFAULT_PER_PAGE)
        if per_page is None:
            return _invalid("per_page must be a positive integer")
        per_page = min(per_page, MAX_PER_PAGE)
        matching = [
            t
            for t in self.templates
            if (status is None or t.get("status") == status)
            and (category is None or t.get("category") == category)
        ]
        quirk = self._pagination_quirk
        if quirk == "ignores_page":
            page = 1
        start = (page - 1) * per_page
        data: dict[str, Any] = {"templates": matching[start : start + per_page]}
        if quirk != "no_pagination":
            total = len(matching) + (2 * per_page if quirk == "total_lies_high" else 0)
            data["pagination"] = {"total": total, "page": page, "per_page": per_page}
        return _ok(data)
