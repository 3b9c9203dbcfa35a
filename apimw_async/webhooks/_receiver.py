"""The framework-agnostic webhook receiver: verify, answer, de-duplicate, dispatch.

It takes the raw body and the request headers and returns a :class:`WebhookReply`; adapters
(aiohttp here, others elsewhere) only translate requests and replies.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from .._config import LOGGER_NAME
from .._errors import ConfigurationError
from ._events import VerificationChallenge, WebhookEvent, WebhookPayloadError, parse_event
from ._signature import SIGNATURE_HEADER, _key, verify_signature

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_DEDUP_SIZE",
    "ChallengeResponse",
    "ErrorHook",
    "WebhookHandler",
    "WebhookReceiver",
    "WebhookReply",
    "WebhookStats",
]

log = logging.getLogger(f"{LOGGER_NAME}.webhooks")

#: How many recent event ids are remembered to suppress redeliveries.
DEFAULT_DEDUP_SIZE: Final = 10_000
#: How long :meth:`WebhookReceiver.aclose` lets in-flight handlers finish before cancelling.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0

#: The user's event handler; called once per (non-duplicate) event, off the request path.
WebhookHandler = Callable[[WebhookEvent], Awaitable[object]]
#: Called as ``on_error(event, exception)`` when the handler raises; may be async.
ErrorHook = Callable[[WebhookEvent, Exception], object]
#: How a verification challenge is answered; see :class:`WebhookReceiver`.
ChallengeResponse = Literal["text", "json"]

_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"


@attrs.frozen
class WebhookReply:
    """What to answer a delivery with: an HTTP ``status``, ``body`` bytes and ``content_type``."""

    status: int
    body: bytes = b""
    content_type: str = _TEXT


_OK: Final = WebhookReply(200, b"")
_UNAUTHORIZED: Final = WebhookReply(401, b"invalid or missing signature")
_MALFORMED: Final = WebhookReply(400, b"malformed webhook payload")
_CLOSED: Final = WebhookReply(503, b"webhook receiver is closed")


@attrs.define
class WebhookStats:
    """Counters of a receiver (read them; they only grow)."""

    #: Calls to :meth:`WebhookReceiver.receive`.
    received: int = 0
    #: Events handed to the handler.
    delivered: int = 0
    #: Redeliveries acknowledged without calling the handler again.
    duplicates: int = 0
    #: Verification challenges answered.
    challenges: int = 0
    #: Deliveries refused: bad or missing signature (401), bad payload (400), closed (503).
    rejected: int = 0
    #: Handler calls that raised.
    handler_errors: int = 0
    #: Handler calls cancelled by :meth:`WebhookReceiver.aclose`.
    handlers_cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return attrs.asdict(self)


class WebhookReceiver:
    """Receives APIMW webhook deliveries independently of any web framework.

    ``secret`` is the webhook's shared secret, or several (e.g. old and new during a rotation:
    a delivery signed with any of them is accepted), or ``None`` to skip verification (not
    recommended: the docs say to always verify). With a secret, ``X-APIMW-Signature`` must be
    present and valid (``require_signature=False`` accepts unsigned deliveries but still
    refuses a wrong signature). One exception: a ``webhook.verification`` challenge *without*
    a signature header is answered, since echoing a challenge reveals nothing and the docs do
    not say whether the handshake is signed; a challenge with a wrong signature gets 401.

    :meth:`receive` answers within the request: 401 for a bad or missing signature, 400 for a
    signed body that is not a JSON object, the challenge for a handshake, and 200 for every
    event, *before* ``handler`` runs in a background task (APIMW wants a 200 within five
    seconds and retries otherwise). A redelivered event (same type and id, within the last
    ``dedup_size`` events; ``0`` disables) is acknowledged without calling the handler again;
    events without an id are always delivered. Handler exceptions are logged on the
    ``apimw_async.webhooks`` logger and passed to ``on_error(event, exc)`` if given.

    ``challenge_response`` (the docs leave the format open, Gap 22): ``"text"`` (default)
    answers 200 with the bare challenge as a ``text/plain`` body, the literal reading of
    "respond with the challenge value" and what Meta's WhatsApp Cloud API handshake does;
    ``"json"`` answers ``{"challenge": "..."}`` as ``application/json``.

    Use it from one event loop; :meth:`aclose` (or ``async with``) stops accepting deliveries
    (503, so APIMW retries them later) and settles the handlers still running. Secrets never
    appear in ``repr`` or logs.
    """

    def __init__(
        self,
        secret: str | bytes | Sequence[str | bytes] | None,
        handler: WebhookHandler,
        *,
        require_signature: bool = True,
        dedup_size: int = DEFAULT_DEDUP_SIZE,
        challenge_response: ChallengeResponse = "text",
        on_error: ErrorHook | None = None,
    ) -> None:
        self._keys = _keys(secret)
        if not callable(handler):
            raise ConfigurationError("handler must be an async callable taking the event")
        if on_error is not None and not callable(on_error):
            raise ConfigurationError("on_error must be callable or None")
        if isinstance(dedup_size, bool) or not isinstance(dedup_size, int) or dedup_size < 0:
            raise ConfigurationError("dedup_size must be an integer >= 0")
        if challenge_response not in ("text", "json"):
            raise ConfigurationError('challenge_response must be "text" or "json"')
        self._handler = handler
        self._on_error = on_error
        self._require_signature = bool(require_signature)
        self._dedup_size = dedup_size
        self._challenge_response: ChallengeResponse = challenge_response
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = WebhookStats()
        if not self._keys:
            log.warning("webhook receiver has no secret: delivery signatures are NOT verified")

    @property
    def pending(self) -> int:
        """Handler calls still running."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def receive(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookReply:
        """Handle one delivery: ``raw_body`` exactly as received, ``headers`` of the request.

        Never raises for anything the sender controls; the handler runs after this returns.
        """
        self.stats.received += 1
        if self._closed:
            return self._reject(_CLOSED)
        signature = _header(headers, SIGNATURE_HEADER)
        if isinstance(signature, str) and not signature.strip():
            signature = None  # a blank header carries no signature: treat it as absent
        verified = False
        if self._keys and signature is not None:
            if not any(verify_signature(key, raw_body, signature) for key in self._keys):
                log.warning("webhook delivery rejected: signature does not match")
                return self._reject(_UNAUTHORIZED)
            verified = True
        must_verify = bool(self._keys) and self._require_signature and not verified
        try:
            event = parse_event(raw_body)
        except WebhookPayloadError as exc:
            if must_verify:
                # Unauthenticated: say no more than "unauthorized".
                log.warning("webhook delivery rejected: no %s header", SIGNATURE_HEADER)
                return self._reject(_UNAUTHORIZED)
            log.warning("webhook delivery rejected: %s", exc)
            return self._reject(_MALFORMED)
        if isinstance(event, VerificationChallenge):
            return self._answer(event)
        if must_verify:
            log.warning("webhook delivery rejected: no %s header", SIGNATURE_HEADER)
            return self._reject(_UNAUTHORIZED)
        if self._is_duplicate(event):
            self.stats.duplicates += 1
            log.debug("duplicate webhook delivery suppressed: %r %r", event.type, event.id)
            return _OK
        self._dispatch(event)
        return _OK

    async def drain(self) -> None:
        """Wait until every handler call started so far (and any started meanwhile) is done."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop accepting deliveries; give running handlers ``timeout`` seconds, then cancel.

        ``timeout=0`` cancels them at once, ``None`` waits for them however long they take.
        Cancelled handlers' events were already acknowledged, so they are logged as lost.
        """
        self._closed = True
        try:
            if self._tasks and (timeout is None or timeout > 0):
                await asyncio.wait(set(self._tasks), timeout=timeout)
        finally:
            stragglers = [task for task in self._tasks if not task.done()]
            for task in stragglers:
                task.cancel()
            if stragglers:
                self.stats.handlers_cancelled += len(stragglers)
                log.warning(
                    "cancelled %d webhook handler(s) at close; their events are lost",
                    len(stragglers),
                )
                await asyncio.gather(*stragglers, return_exceptions=True)

    async def __aenter__(self) -> WebhookReceiver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"WebhookReceiver(secrets={len(self._keys)}, "
            f"require_signature={self._require_signature}, "
            f"challenge_response={self._challenge_response!r}, dedup_size={self._dedup_size}, "
            f"pending={self.pending}, closed={self._closed})"
        )

    # --- internals ---------------------------------------------------------------------------

    def _reject(self, reply: WebhookReply) -> WebhookReply:
        self.stats.rejected += 1
        return reply

    def _answer(self, challenge: VerificationChallenge) -> WebhookReply:
        self.stats.challenges += 1
        log.info("answering webhook verification challenge (%s)", self._challenge_response)
        if self._challenge_response == "json":
            body = json.dumps({"challenge": challenge.challenge}).encode("ascii")
            return WebhookReply(200, body, _JSON)
        # surrogatepass: a JSON "\ud800" escape decodes to a lone surrogate; never crash on it.
        return WebhookReply(200, challenge.challenge.encode("utf-8", "surrogatepass"), _TEXT)

    def _is_duplicate(self, event: WebhookEvent) -> bool:
        if event.id is None or self._dedup_size == 0:
            return False
        # The type is part of the key in case a payload's "id" is really the message id, which
        # message.sent, .delivered and .read would share.
        key = (event.type, event.id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self._dedup_size:
            self._seen.popitem(last=False)
        return False

    def _dispatch(self, event: WebhookEvent) -> None:
        self.stats.delivered += 1
        task = asyncio.get_running_loop().create_task(self._run(event), name="apimw-webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)

    async def _run(self, event: WebhookEvent) -> None:
        try:
            result: Any = self._handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.stats.handler_errors += 1
            # %r: type and id come from the sender; keep control characters out of the log.
            log.exception("webhook handler failed for %r event %r", event.type, event.id)
            await self._report(event, exc)

    async def _report(self, event: WebhookEvent, exc: Exception) -> None:
        if self._on_error is None:
            return
        try:
            result: Any = self._on_error(event, exc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("webhook on_error hook failed")


def _keys(secret: object) -> tuple[bytes, ...]:
    # Typed loosely on purpose: _key() checks each item's type at run time.
    if secret is None:
        return ()
    if isinstance(secret, str):
        return (_key(secret),)
    if isinstance(secret, (bytes, bytearray, memoryview)):
        return (_key(bytes(secret)),)
    if not isinstance(secret, Sequence):
        raise ConfigurationError("secret must be str, bytes, a sequence of them, or None")
    if not secret:
        raise ConfigurationError("the list of webhook secrets is empty")
    return tuple(_key(item) for item in secret)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; HTTP header names are not.
    wanted = name.lower()
    for key, candidate in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return candidate
    return None


def _retrieve(task: asyncio.Task[None]) -> None:
    # _run catches Exception; this only marks a BaseException (other than cancellation) as
    # retrieved so asyncio never reports "Task exception was never retrieved".
    if not task.cancelled():
        task.exception()
