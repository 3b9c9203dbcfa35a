"""``client.webhooks``: register a webhook (receiving them is :mod:`apimw_async.webhooks`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._errors import ValidationError
from .._types import Webhook
from ._checks import check_events, check_name, check_webhook_url

if TYPE_CHECKING:
    from .._client import Client

__all__ = ["WebhooksResource"]


class WebhooksResource:
    """The ``/webhooks`` endpoint (only registration is documented)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def register(
        self,
        url: str,
        events: Iterable[str],
        *,
        secret: str | None = None,
        active: bool = True,
    ) -> Webhook:
        """``POST /webhooks``: deliver ``events`` to ``url`` (HTTPS), signed with ``secret``.

        APIMW then sends a ``webhook.verification`` challenge to ``url``. Like a send, a
        registration whose request may have reached the server is never repeated by the client
        (a second POST could register a second webhook). The returned :class:`Webhook` keeps
        ``secret`` (the server does not echo it) out of its ``repr``.

        >>> hook = await client.webhooks.register(                    # doctest: +SKIP
        ...     "https://example.com/apimw/hook",
        ...     ["message.delivered", "message.read"],
        ...     secret="whsec_your_secret_key",
        ... )
        >>> hook                                                      # doctest: +SKIP
        Webhook(id='whk_...', url='https://example.com/apimw/hook', events=(...), active=True, ...)
        """
        if not isinstance(events, Iterable):
            # (not even validate=False can send that)
            raise ValidationError(
                "events must be a list of event names, e.g. ['message.delivered']", field="events"
            )
        event_list: Any = events if isinstance(events, (str, bytes)) else list(events)
        if self._client.validate:
            check_webhook_url(url, allow_loopback_http=self._client.allows_plain_http)
            check_events(event_list)
            if secret is not None:
                check_name(secret, "secret")
        body: dict[str, Any] = {"url": url, "events": event_list, "active": bool(active)}
        if secret is not None:
            body["secret"] = secret
        response = await self._client.request("POST", "/webhooks", json=body)
        return Webhook.from_data(
            response.data,
            url=url,
            events=event_list if isinstance(event_list, list) else [],
            active=bool(active),
            secret=secret,
        )
