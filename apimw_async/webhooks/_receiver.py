"""The framework-agnostic webhook receiver: verify, answer, de-duplicate, dispatch.

It takes the raw body and the request headers and returns a :class:`WebhookReply`; adapters
(aiohttp here, others elsewhere) only translate requests and replies.

Three ways to run the handler (see :class:`WebhookReceiver`): in the background after the 200
(memory, the default), before the answer (``mode="handoff"``), or from a durable queue the
delivery is stored in before the 200 (``queue=``, e.g.
:class:`apimw_async.webhooks.redis.RedisWebhookQueue`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs

from .._config import LOGGER_NAME
from .._errors import APIMWError, ConfigurationError
from ._events import VerificationChallenge, WebhookEvent, WebhookPayloadError, parse_event
from ._signature import SIGNATURE_HEADER, _key, verify_signature

__all__ = [
    "APIMW_ANSWER_BUDGET",
    "DEFAULT_ANSWER_TIMEOUT",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_DEDUP_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "ChallengeResponse",
    "DedupState",
    "ErrorHook",
    "MemoryWebhookDedup",
    "ReceiverMode",
    "WebhookDedup",
    "WebhookHandler",
    "WebhookQueue",
    "WebhookReceiver",
    "WebhookReply",
    "WebhookStats",
]

log = logging.getLogger(f"{LOGGER_NAME}.webhooks")

#: How many recent event ids are remembered to suppress redeliveries.
DEFAULT_DEDUP_SIZE: Final = 10_000
#: How long :meth:`WebhookReceiver.aclose` lets in-flight handlers finish before cancelling.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0
#: APIMW counts a delivery as failed when no 200 arrives within this many seconds.
APIMW_ANSWER_BUDGET: Final = 5.0
#: The longest a delivery waits inside the receiver before it is answered (a handler slot, a
#: hand-off handler, the queue's Redis): safely under :data:`APIMW_ANSWER_BUDGET`, leaving
#: room for the network and the web framework.
DEFAULT_ANSWER_TIMEOUT: Final = 3.0
#: Handler calls running at once per receiver (per process), in every mode.
DEFAULT_MAX_CONCURRENCY: Final = 100
#: A hand-off claim on an event id outlives the answer deadline by this much (if the process
#: dies while holding it, a redelivery a minute later finds it expired).
_CLAIM_GRACE: Final = 10.0

#: The user's event handler; called once per (non-duplicate) event.
WebhookHandler = Callable[[WebhookEvent], Awaitable[object]]
#: Called as ``on_error(event, exception)`` when the handler raises; may be async.
ErrorHook = Callable[[WebhookEvent, Exception], object]
#: How a verification challenge is answered; see :class:`WebhookReceiver`.
ChallengeResponse = Literal["text", "json"]
#: ``"background"``: answer, then handle; ``"handoff"``: handle, then answer.
ReceiverMode = Literal["background", "handoff"]
#: What a de-duplicator knows of an event: never seen (and now claimed), handled (or
#: accepted for handling), or claimed by a delivery still being handled.
DedupState = Literal["new", "done", "busy"]

_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"
_NOSNIFF: Final = (("X-Content-Type-Options", "nosniff"),)


@attrs.frozen
class WebhookReply:
    """What to answer a delivery with: an HTTP ``status``, ``body`` bytes, ``content_type``
    and extra ``headers`` (name, value pairs)."""

    status: int
    body: bytes = b""
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


_OK: Final = WebhookReply(200, b"")
_UNAUTHORIZED: Final = WebhookReply(401, b"invalid or missing signature")
_MALFORMED: Final = WebhookReply(400, b"malformed webhook payload")
_CLOSED: Final = WebhookReply(503, b"webhook receiver is closed")
_BUSY: Final = WebhookReply(503, b"webhook receiver is busy; deliver again later")
_IN_FLIGHT: Final = WebhookReply(503, b"this event is being handled; deliver again later")
_NOT_STORED: Final = WebhookReply(503, b"webhook event could not be stored; deliver again later")
_NOT_HANDLED: Final = WebhookReply(500, b"webhook event was not handled; deliver again later")


@attrs.define
class WebhookStats:
    """Counters of a receiver (read them; they only grow)."""

    #: Calls to :meth:`WebhookReceiver.receive`.
    received: int = 0
    #: Handler calls started (with a queue: in this process, retries included).
    delivered: int = 0
    #: Redeliveries acknowledged without calling the handler again.
    duplicates: int = 0
    #: Verification challenges answered.
    challenges: int = 0
    #: Deliveries refused: bad or missing signature (401), bad payload (400), closed (503).
    rejected: int = 0
    #: Handler calls that raised (or, in hand-off mode, overran the deadline).
    handler_errors: int = 0
    #: Handler calls cancelled by :meth:`WebhookReceiver.aclose`.
    handlers_cancelled: int = 0
    #: Events stored in the queue before the 200 (``queue=`` only).
    queued: int = 0
    #: Deliveries answered 503 because the queue could not store them in time.
    queue_errors: int = 0
    #: Deliveries answered 503 because no handler slot freed up in time (memory mode).
    overloaded: int = 0
    #: Hand-off deliveries answered with an error: the handler failed or overran.
    handoff_failures: int = 0
    #: Redeliveries answered 503 because the same event was still being handled.
    in_flight_duplicates: int = 0
    #: De-duplicator failures (e.g. Redis down); the event was handled anyway.
    dedup_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return attrs.asdict(self)


@runtime_checkable
class WebhookDedup(Protocol):
    """Remembers which events were handled: :class:`MemoryWebhookDedup` (per process, the
    default) or :class:`apimw_async.webhooks.redis.RedisWebhookDedup` (the whole fleet).

    ``claim`` marks a new event as taken for ``hold`` seconds (or for good, ``hold=None``) and
    says ``"new"``; an event already handled is ``"done"``, one taken but not yet confirmed
    ``"busy"``. ``confirm`` marks a taken event handled; ``release`` forgets a taken one (its
    handling failed, a redelivery must run it).
    """

    async def claim(self, key: tuple[str, str], hold: float | None) -> DedupState: ...

    async def confirm(self, key: tuple[str, str]) -> None: ...

    async def release(self, key: tuple[str, str]) -> None: ...


class MemoryWebhookDedup:
    """Per-process de-duplication: the last ``size`` event keys, in memory (LRU)."""

    def __init__(self, size: int = DEFAULT_DEDUP_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigurationError("dedup_size must be an integer >= 0")
        self.size = size
        self._seen: OrderedDict[tuple[str, str], bool] = OrderedDict()

    async def claim(self, key: tuple[str, str], hold: float | None) -> DedupState:
        if self.size == 0:
            return "new"
        done = self._seen.get(key)
        if done is not None:
            self._seen.move_to_end(key)
            return "done" if done else "busy"
        self._seen[key] = hold is None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return "new"

    async def confirm(self, key: tuple[str, str]) -> None:
        if self.size and key in self._seen:
            self._seen[key] = True

    async def release(self, key: tuple[str, str]) -> None:
        self._seen.pop(key, None)

    def __repr__(self) -> str:
        return f"MemoryWebhookDedup(size={self.size}, remembered={len(self._seen)})"


@runtime_checkable
class WebhookQueue(Protocol):
    """A durable queue the receiver stores deliveries in before answering 200, and runs the
    handler from (:class:`apimw_async.webhooks.redis.RedisWebhookQueue`).

    ``put`` stores a verified event (its exact body) and returns ``False`` for one already
    stored (a redelivery); it raises when the event is not stored. ``start`` runs ``handler``
    on stored events in this process, at most ``concurrency`` at once, until ``aclose``. The
    handler raises to say "not handled": the queue retries it later.
    """

    async def put(self, event: WebhookEvent, raw_body: bytes) -> bool: ...

    async def start(self, handler: WebhookHandler, *, concurrency: int) -> None: ...

    async def aclose(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None: ...


class WebhookReceiver:
    """Receives APIMW webhook deliveries independently of any web framework.

    ``secret`` is the webhook's shared secret, or several (e.g. old and new during a rotation:
    a delivery signed with any of them is accepted), or ``None`` to skip verification (not
    recommended: the docs say to always verify). With a secret, ``X-APIMW-Signature`` must be
    present and valid (``require_signature=False`` accepts unsigned deliveries but still
    refuses a wrong signature). A ``webhook.verification`` challenge *without* a signature
    header is answered, since echoing a challenge reveals nothing and the docs do not say
    whether the handshake is signed, unless ``require_signed_challenge=True``; a challenge
    with a wrong signature always gets 401.

    :meth:`receive` answers within the request: 401 for a bad or missing signature, 400 for a
    signed body that is not a JSON object, the challenge for a handshake, and for an event:

    * memory mode (default, ``mode="background"``): 200 at once, then ``handler`` runs in a
      background task. An event acknowledged but not finished when the process dies is lost.
    * hand-off (``mode="handoff"``): ``handler`` runs *before* the answer, bounded by
      ``answer_timeout`` seconds; 200 when it returns, 500 when it raises or overruns (it is
      cancelled), so APIMW delivers again. For handlers that only enqueue into a queue you
      already trust (Celery, arq, taskiq, a database outbox).
    * durable (``queue=``): the event is stored before the 200 (503 if it cannot be stored
      within ``answer_timeout``) and handlers run from the queue in every process that called
      :meth:`start`, at least once, retried until they succeed or are dead-lettered.

    At most ``max_concurrency`` handler calls run at once in every mode. In memory mode a
    delivery waits up to ``answer_timeout`` for a slot, then gets 503 (logged, counted in
    ``stats.overloaded``): APIMW redelivers a minute later, but disables a webhook after five
    failed deliveries in a row, so size the limit for your peak.

    A redelivered event (same type and id) is acknowledged without calling the handler
    again: remembered by ``dedup`` (default: the last ``dedup_size`` events of this process;
    :class:`~apimw_async.webhooks.redis.RedisWebhookDedup` for the fleet; with a queue, the
    queue de-duplicates). Events without an id are always delivered. Handler exceptions are
    logged on the ``apimw_async.webhooks`` logger and passed to ``on_error(event, exc)``.

    ``challenge_response`` (the docs leave the format open, Gap 22): ``"text"`` (default)
    answers 200 with the bare challenge as a ``text/plain`` body, the literal reading of
    "respond with the challenge value" and what Meta's WhatsApp Cloud API handshake does;
    ``"json"`` answers ``{"challenge": "..."}`` as ``application/json``. Either carries
    ``X-Content-Type-Options: nosniff`` (the body echoes sender-chosen text).

    Use it from one event loop; :meth:`start` starts the queue's consumers (the adapters call
    it at startup); :meth:`aclose` (or ``async with``) stops accepting deliveries (503, so
    APIMW retries them later) and settles the handlers still running. Secrets never appear in
    ``repr`` or logs.
    """

    def __init__(
        self,
        secret: str | bytes | Sequence[str | bytes] | None,
        handler: WebhookHandler,
        *,
        queue: WebhookQueue | None = None,
        mode: ReceiverMode = "background",
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        dedup: WebhookDedup | None = None,
        require_signature: bool = True,
        require_signed_challenge: bool = False,
        dedup_size: int = DEFAULT_DEDUP_SIZE,
        challenge_response: ChallengeResponse = "text",
        on_error: ErrorHook | None = None,
    ) -> None:
        self._keys = _keys(secret)
        if not callable(handler):
            raise ConfigurationError("handler must be an async callable taking the event")
        if on_error is not None and not callable(on_error):
            raise ConfigurationError("on_error must be callable or None")
        if challenge_response not in ("text", "json"):
            raise ConfigurationError('challenge_response must be "text" or "json"')
        if mode not in ("background", "handoff"):
            raise ConfigurationError('mode must be "background" or "handoff"')
        if queue is not None and not isinstance(queue, WebhookQueue):
            raise ConfigurationError("queue must have put(), start() and aclose() methods")
        if queue is not None and mode == "handoff":
            raise ConfigurationError("a queue and mode='handoff' exclude each other")
        if queue is not None and dedup is not None:
            raise ConfigurationError("with a queue, the queue de-duplicates: pass no dedup")
        if dedup is not None and not isinstance(dedup, WebhookDedup):
            raise ConfigurationError("dedup must have claim(), confirm() and release() methods")
        if (
            isinstance(answer_timeout, bool)
            or not isinstance(answer_timeout, (int, float))
            or not 0 < answer_timeout < APIMW_ANSWER_BUDGET
        ):
            raise ConfigurationError(
                f"answer_timeout must be a number of seconds in (0, {APIMW_ANSWER_BUDGET:g}): "
                "APIMW counts a delivery as failed when no answer comes within 5 s"
            )
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ConfigurationError("max_concurrency must be a positive integer")
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be a positive integer")
        memory = MemoryWebhookDedup(dedup_size)  # validates dedup_size in every case
        self._handler = handler
        self._on_error = on_error
        self._require_signature = bool(require_signature)
        self._require_signed_challenge = bool(require_signed_challenge)
        self._dedup_size = dedup_size
        self._dedup: WebhookDedup = dedup if dedup is not None else memory
        self._queue = queue
        self._mode: ReceiverMode = mode
        self._answer_timeout = float(answer_timeout)
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._challenge_response: ChallengeResponse = challenge_response
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self.stats = WebhookStats()
        if not self._keys:
            log.warning("webhook receiver has no secret: delivery signatures are NOT verified")

    @property
    def pending(self) -> int:
        """Handler calls still running in the background (memory mode)."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def mode(self) -> Literal["background", "handoff", "queue"]:
        """``"queue"`` with a queue, else the ``mode`` given."""
        return "queue" if self._queue is not None else self._mode

    @property
    def queue(self) -> WebhookQueue | None:
        """The durable queue, if any."""
        return self._queue

    async def start(self) -> None:
        """Start handling queued events in this process (with a queue; else nothing to do).

        A process may call only this, without serving HTTP: a consumer-only worker. Calling
        it again does nothing.
        """
        if self._closed:
            raise ConfigurationError("the webhook receiver was closed; make a new one")
        if self._started:
            return
        self._started = True
        if self._queue is not None:
            await self._queue.start(self._consume, concurrency=self._max_concurrency)

    async def receive(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookReply:
        """Handle one delivery: ``raw_body`` exactly as received, ``headers`` of the request.

        Never raises for anything the sender controls.
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
            if self._require_signed_challenge and self._keys and not verified:
                log.warning("webhook verification challenge rejected: it is not signed")
                return self._reject(_UNAUTHORIZED)
            return self._answer(event)
        if must_verify:
            log.warning("webhook delivery rejected: no %s header", SIGNATURE_HEADER)
            return self._reject(_UNAUTHORIZED)
        if self._queue is not None:
            return await self._enqueue(self._queue, event, bytes(raw_body))
        key = _dedup_key(event)
        if key is not None:
            hold = None if self._mode == "background" else self._answer_timeout + _CLAIM_GRACE
            state = await self._claim(key, hold)
            if state == "done":
                self.stats.duplicates += 1
                log.debug("duplicate webhook delivery suppressed: %r %r", event.type, event.id)
                return _OK
            if state == "busy":
                self.stats.in_flight_duplicates += 1
                return _IN_FLIGHT
        if self._mode == "handoff":
            return await self._handoff(event, key)
        return await self._background(event, key)

    async def drain(self) -> None:
        """Wait until every background handler call started so far (and any started
        meanwhile) is done."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop accepting deliveries; give running handlers ``timeout`` seconds, then cancel.

        ``timeout=0`` cancels them at once, ``None`` waits for them however long they take.
        In memory mode a cancelled handler's event was already acknowledged, so it is logged
        as lost; with a queue it stays in the queue and another process (or the next start)
        handles it.
        """
        self._closed = True
        try:
            if self._queue is not None:
                await self._queue.aclose(timeout)
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
            f"WebhookReceiver(mode={self.mode!r}, secrets={len(self._keys)}, "
            f"require_signature={self._require_signature}, "
            f"challenge_response={self._challenge_response!r}, dedup_size={self._dedup_size}, "
            f"max_concurrency={self._max_concurrency}, pending={self.pending}, "
            f"closed={self._closed})"
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
            return WebhookReply(200, body, _JSON, _NOSNIFF)
        # surrogatepass: a JSON "\ud800" escape decodes to a lone surrogate; never crash on it.
        text = challenge.challenge.encode("utf-8", "surrogatepass")
        return WebhookReply(200, text, _TEXT, _NOSNIFF)

    async def _claim(self, key: tuple[str, str], hold: float | None) -> DedupState:
        try:
            return await asyncio.wait_for(self._dedup.claim(key, hold), self._answer_timeout)
        except Exception as exc:
            # Handling twice beats losing the event: fail open.
            self.stats.dedup_errors += 1
            log.warning(
                "webhook de-duplication unavailable (%s); handling the event anyway",
                _why(exc),
            )
            return "new"

    async def _settle(self, key: tuple[str, str] | None, handled: bool) -> None:
        if key is None:
            return
        try:
            if handled:
                await asyncio.wait_for(self._dedup.confirm(key), self._answer_timeout)
            else:
                await asyncio.wait_for(self._dedup.release(key), self._answer_timeout)
        except Exception as exc:
            self.stats.dedup_errors += 1
            log.warning("webhook de-duplication update failed (%s)", _why(exc))

    async def _enqueue(self, queue: WebhookQueue, event: WebhookEvent, body: bytes) -> WebhookReply:
        try:
            stored = await asyncio.wait_for(queue.put(event, body), self._answer_timeout)
        except Exception as exc:
            self.stats.queue_errors += 1
            # The delivery was not stored: an error answer makes APIMW deliver it again.
            log.warning(
                "webhook event %r %r not stored (%s); answered 503 so APIMW redelivers it",
                event.type,
                event.id,
                _why(exc),
            )
            return _NOT_STORED
        if stored:
            self.stats.queued += 1
        else:
            self.stats.duplicates += 1
            log.debug("duplicate webhook delivery suppressed: %r %r", event.type, event.id)
        return _OK

    async def _handler_slot(self, key: tuple[str, str] | None) -> bool:
        """A handler slot within the answer deadline; without one the delivery counts as
        overloaded and its dedup claim is released (the caller answers 503)."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._answer_timeout)
        except asyncio.TimeoutError:
            self.stats.overloaded += 1
            await self._settle(key, handled=False)
            return False
        return True

    async def _background(self, event: WebhookEvent, key: tuple[str, str] | None) -> WebhookReply:
        if not await self._handler_slot(key):
            log.warning(
                "webhook handlers saturated (%d running for %.1f s): answered 503 so APIMW "
                "redelivers %r %r in about a minute; raise max_concurrency or use a queue",
                self._max_concurrency,
                self._answer_timeout,
                event.type,
                event.id,
            )
            return _BUSY
        self._dispatch(event)
        return _OK

    async def _handoff(self, event: WebhookEvent, key: tuple[str, str] | None) -> WebhookReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._answer_timeout
        if not await self._handler_slot(key):
            log.warning(
                "webhook hand-off saturated (%d running): answered 503 for %r %r",
                self._max_concurrency,
                event.type,
                event.id,
            )
            return _BUSY
        try:
            self.stats.delivered += 1
            await asyncio.wait_for(self._call(event), max(0.0, deadline - loop.time()))
        except Exception as exc:
            self.stats.handoff_failures += 1
            if not isinstance(exc, asyncio.TimeoutError):
                await self._handler_failed(event, exc)
            else:
                self.stats.handler_errors += 1
                log.warning(
                    "webhook hand-off handler overran %.1f s for %r %r: cancelled, answered "
                    "an error so APIMW redelivers",
                    self._answer_timeout,
                    event.type,
                    event.id,
                )
                await self._report(event, exc)
            await self._settle(key, handled=False)
            return _NOT_HANDLED
        finally:
            self._slots.release()
        await self._settle(key, handled=True)
        return _OK

    def _dispatch(self, event: WebhookEvent) -> None:
        self.stats.delivered += 1
        task = asyncio.get_running_loop().create_task(self._run(event), name="apimw-webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)

    async def _run(self, event: WebhookEvent) -> None:
        try:
            await self._call(event)
        except Exception as exc:
            await self._handler_failed(event, exc)
        finally:
            self._slots.release()

    async def _consume(self, event: WebhookEvent) -> None:
        """The queue's handler: raises when the event was not handled (the queue retries)."""
        self.stats.delivered += 1
        try:
            await self._call(event)
        except Exception as exc:
            await self._handler_failed(event, exc)
            raise

    async def _call(self, event: WebhookEvent) -> None:
        result: Any = self._handler(event)
        if inspect.isawaitable(result):
            await result

    async def _handler_failed(self, event: WebhookEvent, exc: Exception) -> None:
        self.stats.handler_errors += 1
        # %r: type and id come from the sender; keep control characters out of the log.
        log.error("webhook handler failed for %r event %r", event.type, event.id, exc_info=exc)
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


def _dedup_key(event: WebhookEvent) -> tuple[str, str] | None:
    # The type is part of the key in case a payload's "id" is really the message id, which
    # message.sent, .delivered and .read would share.
    if event.id is None:
        return None
    return (event.type, event.id)


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


def _why(exc: BaseException) -> str:
    """What a warning says of a store failure: the SDK's own errors carry no secret and say
    what to do (a client bound to another process, Redis unreachable...), so their message is
    shown; of anything else only the type, since its text may hold a connection URL."""
    if isinstance(exc, APIMWError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
