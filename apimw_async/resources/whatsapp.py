"""``client.whatsapp``: send text and template messages, read a message's status, list templates."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from .._config import LOGGER_NAME
from .._errors import ValidationError
from .._types import (
    MessageInfo,
    SentMessage,
    Template,
    TemplateComponentInput,
    TemplatePage,
    TemplateStatus,
    components_payload,
)
from ._checks import check_name, check_phone, check_text

if TYPE_CHECKING:
    from .._client import Client

__all__ = ["DEFAULT_MAX_PAGES", "DEFAULT_PER_PAGE", "WhatsAppResource"]

log = logging.getLogger(f"{LOGGER_NAME}.whatsapp")

#: Page size asked for when listing templates (the docs' example answers ``per_page: 20``).
DEFAULT_PER_PAGE: Final = 20
#: :meth:`WhatsAppResource.list_templates` never fetches more pages than this.
DEFAULT_MAX_PAGES: Final = 1000

_FILTERABLE_STATUSES: Final = frozenset(
    {TemplateStatus.APPROVED.value, TemplateStatus.PENDING.value, TemplateStatus.REJECTED.value}
)


def path_segment(value: Any, field: str) -> str:
    """``value`` as one percent-encoded path segment (``/``, ``+``, ``=`` ... all encoded)."""
    if not isinstance(value, str) or not value or value in (".", ".."):
        raise ValidationError(f"{field} must be a non-empty string", field=field)
    return quote(value, safe="")


def _positive(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{field} must be a positive integer", field=field)
    return value


def is_last_page(page: TemplatePage, requested_page: int, requested_per_page: int) -> bool:
    """Whether no page should be asked for after ``page`` (it is not empty).

    The docs give only ``pagination: {total, page, per_page}`` in the answer, so the end is
    guessed from every sign there is: no pagination object; fewer items than a page holds
    (the server's ``per_page`` if it says, else the one asked for); or ``page * per_page``
    reaching ``total``.
    """
    info = page.pagination
    if info is None:
        return True
    size = info.per_page or requested_per_page
    if len(page.templates) < size:
        return True
    number = info.page or requested_page
    return info.total is not None and number * size >= info.total


class WhatsAppResource:
    """The ``/whatsapp`` endpoints.

    Sends are never repeated by the client once their request may have reached the server
    (the API has no idempotency key): a timeout, a lost connection or a 5xx after sending
    raises, and only you can tell whether to send again (check with :meth:`get_status` or
    your webhook). A 429 or a connection that was never established is retried.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def send_text(self, to: str, message: str, *, preview_url: bool = False) -> SentMessage:
        """``POST /whatsapp/messages/send``: a text message to ``to`` (E.164).

        ``message`` is at most 4096 characters; free text reaches the recipient only inside
        the 24-hour customer-service window (open a conversation with a template).

        >>> sent = await client.whatsapp.send_text("+1234567890", "Your order shipped!")
        >>> sent.message_id, sent.status, sent.timestamp            # doctest: +SKIP
        ('wamid.HBgM...', <MessageStatus.SENT: 'sent'>, datetime.datetime(2024, 1, 15, ...))
        """
        if self._client.validate:
            check_phone(to)
            check_text(message)
        body = {"to": to, "message": message, "preview_url": bool(preview_url)}
        response = await self._client.request("POST", "/whatsapp/messages/send", json=body)
        return SentMessage.from_data(response.data, to=to)

    async def send_template(
        self,
        to: str,
        template: str,
        language: str,
        *,
        components: Iterable[TemplateComponentInput] | None = None,
    ) -> SentMessage:
        """``POST /whatsapp/messages/template``: an approved template with its variables.

        ``components`` takes the builders (or plain dicts in the WhatsApp Cloud API shape):

        >>> from apimw_async import (TemplateBody, TemplateCurrency, TemplateHeaderImage,
        ...                          TemplateUrlButton)
        >>> sent = await client.whatsapp.send_template(               # doctest: +SKIP
        ...     "+1234567890", "order_confirmation", "en",
        ...     components=[
        ...         TemplateHeaderImage("https://example.com/receipt.png"),
        ...         TemplateBody("Ann", "A-1001", TemplateCurrency.of("USD", "99.99")),
        ...         TemplateUrlButton(0, "A-1001"),
        ...     ],
        ... )
        >>> sent.template                                             # doctest: +SKIP
        'order_confirmation'
        """
        if self._client.validate:
            check_phone(to)
            check_name(template, "template")
            check_name(language, "language")
        body: dict[str, Any] = {"to": to, "template": template, "language": language}
        if components is not None:
            body["components"] = components_payload(components)
        response = await self._client.request("POST", "/whatsapp/messages/template", json=body)
        return SentMessage.from_data(response.data, to=to, template=template)

    async def get_status(self, message_id: str) -> MessageInfo:
        """``GET /whatsapp/messages/{message_id}``: status and sent/delivered/read times.

        The id is sent percent-encoded as one path segment, whatever it contains.

        >>> info = await client.whatsapp.get_status(sent.message_id)  # doctest: +SKIP
        >>> info.status, info.delivered_at, info.read_at
        (<MessageStatus.DELIVERED: 'delivered'>, datetime.datetime(...), None)
        """
        path = "/whatsapp/messages/" + path_segment(message_id, "message_id")
        response = await self._client.request("GET", path, encoded=True)
        return MessageInfo.from_data(response.data)

    async def templates_page(
        self,
        page: int = 1,
        per_page: int = DEFAULT_PER_PAGE,
        *,
        status: TemplateStatus | str | None = None,
        category: str | None = None,
    ) -> TemplatePage:
        """``GET /whatsapp/templates``: one page of templates with its ``pagination``.

        ``page`` and ``per_page`` are sent as query parameters (the docs show them only in the
        answer). ``status`` is ``APPROVED``, ``PENDING`` or ``REJECTED``; ``category`` e.g.
        ``TRANSACTIONAL``, ``MARKETING``, ``OTP`` or ``UTILITY``.

        >>> first = await client.whatsapp.templates_page(page=1, per_page=20)  # doctest: +SKIP
        >>> [t.name for t in first.templates], first.pagination.total
        (['order_confirmation', 'shipping_update'], 2)
        """
        params = {
            "page": str(_positive(page, "page")),
            "per_page": str(_positive(per_page, "per_page")),
        }
        if status is not None:
            params["status"] = self._status_filter(status)
        if category is not None:
            if self._client.validate:
                check_name(category, "category")
            params["category"] = str(category)
        response = await self._client.request("GET", "/whatsapp/templates", params=params)
        return TemplatePage.from_data(response.data)

    async def list_templates(
        self,
        *,
        status: TemplateStatus | str | None = None,
        category: str | None = None,
        per_page: int = DEFAULT_PER_PAGE,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> AsyncGenerator[Template, None]:
        """Every template, page after page (``GET /whatsapp/templates``).

        Stops after an empty page, a short page, ``page * per_page >= total``, an answer
        without pagination, a page identical to the one before (a server ignoring ``page``;
        its items are not yielded twice) or ``max_pages`` pages (logged as a warning), so a
        wrong ``total`` can never make it loop for ever. Pages are fetched as the iteration
        reaches them; ``aclose()`` the generator when leaving the loop early.

        >>> async for template in client.whatsapp.list_templates(status="APPROVED"):
        ...     print(template.name, template.language)              # doctest: +SKIP
        """
        _positive(max_pages, "max_pages")
        previous: tuple[Template, ...] | None = None
        number = 1
        while True:
            page = await self.templates_page(number, per_page, status=status, category=category)
            if not page.templates or page.templates == previous:
                return
            for template in page.templates:
                yield template
            if is_last_page(page, number, per_page):
                return
            if number >= max_pages:
                log.warning(
                    "listing templates stopped after max_pages=%d pages; the server reports "
                    "total=%s",
                    max_pages,
                    page.pagination.total if page.pagination else None,
                )
                return
            previous = page.templates
            number += 1

    def _status_filter(self, status: TemplateStatus | str) -> str:
        value = status.value if isinstance(status, TemplateStatus) else status
        if not self._client.validate:
            return str(value)
        normalized = value.strip().upper() if isinstance(value, str) else ""
        if normalized not in _FILTERABLE_STATUSES:
            raise ValidationError(
                "status must be one of APPROVED, PENDING or REJECTED", field="status"
            )
        return normalized
