"""Receive APIMW webhooks: signature checks, typed events, a framework-agnostic receiver.

APIMW POSTs each event to your HTTPS endpoint with ``X-APIMW-Signature: sha256=<hex>``, an
HMAC-SHA256 of the raw body under the webhook's secret, and wants a 200 within five seconds.
:class:`WebhookReceiver` verifies the signature, answers the ``webhook.verification``
handshake, acknowledges at once, suppresses redeliveries and runs your handler in the
background. Serving it with aiohttp::

    import os

    from aiohttp import web
    from apimw_async.webhooks import MessageEvent, WebhookEvent, WebhookReceiver, make_aiohttp_app

    async def on_event(event: WebhookEvent) -> None:
        if isinstance(event, MessageEvent) and event.is_inbound:
            print(event.from_, "says", event.text)

    receiver = WebhookReceiver(os.environ["APIMW_WEBHOOK_SECRET"], on_event)
    web.run_app(make_aiohttp_app(receiver, path="/webhooks"), port=8080)

Other frameworks call ``await receiver.start()`` at startup, ``await receiver.receive(raw_body,
headers)`` per request (sending back the returned :class:`WebhookReply`) and ``await
receiver.aclose()`` at shutdown. For events that must not be lost, store them in Redis before
the 200 with :class:`apimw_async.webhooks.redis.RedisWebhookQueue` (``queue=``), or run a
handler that hands them to your own queue before the answer (``mode="handoff"``). Without a
server, :func:`verify_signature` and :func:`parse_event` are the building blocks, and
:func:`sign` makes signed test deliveries.
"""

from ._aiohttp import aiohttp_handler, make_aiohttp_app
from ._events import (
    MESSAGE_EVENT_TYPES,
    VERIFICATION_EVENT_TYPE,
    MessageEvent,
    UnknownEvent,
    VerificationChallenge,
    WebhookEvent,
    WebhookPayloadError,
    parse_event,
    parse_event_data,
)
from ._receiver import (
    APIMW_ANSWER_BUDGET,
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_DEDUP_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    ChallengeResponse,
    DedupState,
    ErrorHook,
    MemoryWebhookDedup,
    ReceiverMode,
    WebhookDedup,
    WebhookHandler,
    WebhookQueue,
    WebhookReceiver,
    WebhookReply,
    WebhookStats,
)
from ._signature import SIGNATURE_HEADER, sign, verify_signature

__all__ = [
    "APIMW_ANSWER_BUDGET",
    "DEFAULT_ANSWER_TIMEOUT",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_DEDUP_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "MESSAGE_EVENT_TYPES",
    "SIGNATURE_HEADER",
    "VERIFICATION_EVENT_TYPE",
    "ChallengeResponse",
    "DedupState",
    "ErrorHook",
    "MemoryWebhookDedup",
    "MessageEvent",
    "ReceiverMode",
    "UnknownEvent",
    "VerificationChallenge",
    "WebhookDedup",
    "WebhookEvent",
    "WebhookHandler",
    "WebhookPayloadError",
    "WebhookQueue",
    "WebhookReceiver",
    "WebhookReply",
    "WebhookStats",
    "aiohttp_handler",
    "make_aiohttp_app",
    "parse_event",
    "parse_event_data",
    "sign",
    "verify_signature",
]
