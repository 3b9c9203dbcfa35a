"""Webhooks of the fake server: registration, the ownership handshake, signed deliveries.

A mixin of :class:`~._fake_server.FakeAPIMW`. Deliberately independent of the SDK's webhook
receiver: the signature below is computed here from the docs (HMAC-SHA256 of the raw body with
the webhook secret, lower-case hex, ``sha256=`` prefix), so a receiver tested against this
server is checked against a second implementation.

Choices where the docs are silent (Gaps 20-24):

* Registration accepts ``https`` URLs, and plain ``http`` only for loopback hosts (tests).
  ``events`` must be a non-empty list of known event types (:data:`WEBHOOK_EVENTS`).
* The handshake ``{"type": "webhook.verification", "challenge": ...}`` is signed like any
  delivery; the receiver passes by answering **200** with the challenge as the plain body, as a
  JSON string, or as JSON ``{"challenge": ...}``. Events go only to active, verified webhooks;
  events that happen before the handshake succeeded are not delivered to that webhook.
* Payload: ``{"id": "evt_…", "type", "timestamp", "data": {"message_id", "to", "status",
  "timestamp"}}``, compact JSON in UTF-8 (non-ASCII characters are not escaped).
  ``X-APIMW-Signature`` is sent only when the webhook has a secret.
* Only status **200** counts as delivered (not 201/204). An event is retried on the schedule
  (immediately, then after 1 min, 5 min, 30 min, 2 h on the server clock); when an event has
  failed every attempt the webhook is disabled (``active`` false) and its other pending retries
  are dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import random
import secrets
import sys
from collections.abc import Coroutine, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

import aiohttp
import attrs
import yarl
from aiohttp import web

from ._fake_base import _endpoint, _FakeCore, _invalid, _iso, _ok, _Reply

__all__ = ["DEFAULT_RETRY_SCHEDULE", "SIGNATURE_HEADER", "WEBHOOK_EVENTS", "FakeWebhook"]

_log = logging.getLogger("apimw_async.testing")

#: The event types a webhook may subscribe to (``message.received`` only comes from
#: :meth:`FakeAPIMW.simulate_inbound_message`).
WEBHOOK_EVENTS: Final = frozenset(
    {"message.sent", "message.delivered", "message.read", "message.failed", "message.received"}
)
#: Seconds before each delivery attempt: the documented schedule.
DEFAULT_RETRY_SCHEDULE: Final = (0.0, 60.0, 300.0, 1800.0, 7200.0)
SIGNATURE_HEADER: Final = "X-APIMW-Signature"
_USER_AGENT: Final = "APIMW-Webhooks/1.0 (apimw_async FakeAPIMW)"

ForgedSignature = Literal["forged", "missing", "malformed"]


@attrs.define(eq=False)
class FakeWebhook:
    """A registered webhook and what happened to its deliveries (a live record)."""

    id: str
    url: str
    events: tuple[str, ...]
    active: bool
    """False when registered so, or once disabled after an event failed every attempt."""
    created_at: str
    secret: str | None = attrs.field(default=None, repr=False)
    verified: bool = False
    """Whether the last ownership handshake succeeded."""
    deliveries: int = 0
    """Deliveries answered with 200 (duplicates included)."""
    failures: int = 0
    """Delivery attempts without a 200 in time."""

    def registration(self) -> dict[str, Any]:
        """The ``data`` of the ``201`` answer (the secret is not echoed)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "active": self.active,
            "created_at": self.created_at,
        }


@attrs.define(eq=False)
class _Delivery:
    """One event on its way to one webhook, across its attempts."""

    webhook: FakeWebhook
    body: bytes
    duplicate: bool
    attempts: int = 0


@attrs.frozen
class _PendingEvent:
    """A message status change that happens later on the clock."""

    event_type: str
    data: dict[str, Any]
    at_wall: float


def _event_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sign(secret: str, body: bytes) -> str:
    """The ``X-APIMW-Signature`` value of ``body``: ``sha256=`` + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str) -> str | None:
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        return "url is not a valid URL"
    if not parsed.absolute or not parsed.host:
        return "url must be an absolute HTTPS URL"
    if parsed.scheme == "https" or (parsed.scheme == "http" and _is_loopback(parsed.host)):
        return None
    return "url must use HTTPS (plain http is accepted for loopback hosts only)"


def _challenge_answered(raw: bytes, challenge: str) -> bool:
    text = raw.decode("utf-8", "replace").strip()
    if text == challenge:
        return True
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return value == challenge or (isinstance(value, dict) and value.get("challenge") == challenge)


class _WebhooksMixin(_FakeCore):
    """Webhook registry, handshake, delivery scheduler and retries."""

    verify_webhooks: bool
    webhook_timeout: float
    duplicate_deliveries: float

    def _init_webhooks(
        self,
        *,
        verify_webhooks: bool,
        webhook_timeout: float,
        webhook_retry_schedule: Iterable[float],
        duplicate_deliveries: float,
        seed: int | None,
    ) -> None:
        self.verify_webhooks = verify_webhooks
        self.webhook_timeout = webhook_timeout
        self.webhook_retry_schedule = tuple(webhook_retry_schedule)
        if not 0.0 <= duplicate_deliveries <= 1.0:
            raise ValueError("duplicate_deliveries must be a probability in [0, 1]")
        self.duplicate_deliveries = duplicate_deliveries
        self._webhooks: dict[str, FakeWebhook] = {}
        self._wh_random = random.Random(seed)
        self._wh_heap: list[tuple[float, int, _Delivery | _PendingEvent]] = []
        self._wh_seq = itertools.count()
        self._wh_inflight = 0
        self._wh_tasks: set[asyncio.Task[Any]] = set()
        self._wh_session: aiohttp.ClientSession | None = None
        # The scheduler: it sleeps on the clock until _wh_sleep_until (None: until woken by a
        # push, not on the clock). "Settled" means that sleep matches the heap's first deadline;
        # when the first deadline changes, the scheduler is woken (or interrupted) to re-settle.
        self._wh_scheduler: asyncio.Task[None] | None = None
        self._wh_wake: asyncio.Future[None] | None = None
        self._wh_sleep_until: float | None = None
        self._wh_settled = True
        self._wh_interrupted = False

    @property
    def webhook_retry_schedule(self) -> tuple[float, ...]:
        """Delays before each delivery attempt (seconds on the server clock); its length is the
        number of attempts after which the webhook is disabled."""
        return self._retry_schedule

    @webhook_retry_schedule.setter
    def webhook_retry_schedule(self, schedule: Iterable[float]) -> None:
        delays = tuple(float(delay) for delay in schedule)
        if not delays or any(delay < 0 for delay in delays):
            raise ValueError("webhook_retry_schedule needs at least one non-negative delay")
        self._retry_schedule = delays

    @property
    def webhooks(self) -> Mapping[str, FakeWebhook]:
        """The registered webhooks by id (live records; read-only mapping)."""
        return MappingProxyType(self._webhooks)

    # --- lifecycle (called by FakeAPIMW.start / close) ------------------------------------

    def _webhooks_start(self) -> None:
        self._wh_session = aiohttp.ClientSession(
            headers={"User-Agent": _USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self._wh_settled = False
        self._wh_scheduler = self._spawn(self._run_scheduler())

    async def _webhooks_close(self) -> None:
        session, self._wh_session = self._wh_session, None
        tasks = list(self._wh_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._wh_heap.clear()
        self._wh_inflight = 0
        self._wh_scheduler = self._wh_wake = None
        self._wh_sleep_until, self._wh_settled, self._wh_interrupted = None, True, False
        if session is not None:
            await session.close()
        self._changed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._wh_tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._wh_tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("fake APIMW webhook task failed", exc_info=exc)

    # --- public helpers ----------------------------------------------------------------------

    async def verify_webhook(self, webhook_id: str) -> bool:
        """Run the ownership handshake of ``webhook_id`` again; whether it passed."""
        webhook = self._webhooks[webhook_id]
        self._wh_inflight += 1
        try:
            return await self._handshake(webhook)
        finally:
            self._wh_inflight -= 1
            self._changed()

    async def inject_delivery(
        self,
        webhook_id: str,
        payload: Mapping[str, Any] | bytes,
        *,
        signature: ForgedSignature | None = None,
    ) -> int | None:
        """POST ``payload`` to a webhook once, now; the status it answered (``None``: no answer).

        Ignores ``active``/``verified`` and never retries. A mapping is sent as compact JSON,
        bytes as they are. ``signature``: ``None`` signs correctly (if the webhook has a
        secret), ``"forged"`` sends a well-formed but wrong signature, ``"malformed"`` a value
        that is not ``sha256=<64 hex>``, ``"missing"`` no signature header.
        """
        webhook = self._webhooks[webhook_id]
        body = payload if isinstance(payload, bytes) else _event_json(dict(payload))
        if signature is None:
            header = None if webhook.secret is None else _sign(webhook.secret, body)
        elif signature == "forged":
            header = _sign("forged:" + (webhook.secret or ""), body)
        elif signature == "malformed":
            header = "sha256=" + "z" * 64
        elif signature == "missing":
            header = None
        else:
            raise ValueError(f"unknown signature option {signature!r}")
        self.stats.injected_deliveries += 1
        self._changed()
        status, _ = await self._post(webhook.url, body, header)
        return status

    def simulate_inbound_message(self, from_number: str, text: str) -> str:
        """A customer wrote to the tenant: deliver ``message.received``; the new message id."""
        wall = self.clock.time()
        message_id = "wamid.HBgL" + secrets.token_urlsafe(36)
        data = {
            "message_id": message_id,
            "from": from_number,
            "type": "text",
            "text": text,
            "timestamp": _iso(wall),
        }
        self._message_event("message.received", data, wall)
        return message_id

    def _webhooks_idle(self) -> bool:
        """No handshake or attempt in flight, nothing due on the clock, the scheduler asleep."""
        if self._wh_inflight or not self._wh_settled:
            return False
        heap = self._wh_heap
        return not heap or heap[0][0] > self.clock.monotonic()

    # --- events ------------------------------------------------------------------------------

    def _wants_message_events(self, event_type: str) -> bool:
        return self._wh_session is not None and any(
            event_type in webhook.events for webhook in self._webhooks.values()
        )

    def _message_event(self, event_type: str, data: dict[str, Any], at_wall: float) -> None:
        if self._wh_session is None:
            return
        targets = [
            w for w in self._webhooks.values() if w.active and w.verified and event_type in w.events
        ]
        if not targets:
            return
        body = _event_json(
            {
                "id": "evt_" + secrets.token_hex(12),
                "type": event_type,
                "timestamp": _iso(at_wall),
                "data": data,
            }
        )
        rate = self.duplicate_deliveries
        for webhook in targets:
            duplicate = rate > 0 and self._wh_random.random() < rate
            self._start_attempt(_Delivery(webhook, body, duplicate))

    def _schedule_message_event(
        self, due: float, event_type: str, data: dict[str, Any], at_wall: float
    ) -> None:
        self._push(due, _PendingEvent(event_type, data, at_wall))

    def _push(self, due: float, item: _Delivery | _PendingEvent) -> None:
        heapq.heappush(self._wh_heap, (due, next(self._wh_seq), item))
        self._resettle()

    def _drop_retries(self, webhook: FakeWebhook) -> None:
        heap = self._wh_heap
        heap[:] = [e for e in heap if not (isinstance(e[2], _Delivery) and e[2].webhook is webhook)]
        heapq.heapify(heap)
        self._resettle()

    def _resettle(self) -> None:
        """Make the scheduler sleep until the heap's first deadline, if it does not already."""
        if not self._wh_settled:
            return  # the scheduler is running or about to: it looks at the heap anyway
        heap = self._wh_heap
        if (heap[0][0] if heap else None) == self._wh_sleep_until:
            return
        self._wh_settled = False
        if self._wh_sleep_until is None:
            wake = self._wh_wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        elif self._wh_scheduler is not None:
            self._wh_interrupted = True
            self._wh_scheduler.cancel()

    async def _run_scheduler(self) -> None:
        """Fire what is due on the clock; sleep on the clock only while something is pending.

        One coroutine sleeping directly on the clock (so ``clock.sleepers`` and
        ``next_deadline()`` are exact once settled); a changed first deadline interrupts it.
        """
        loop = asyncio.get_running_loop()
        heap = self._wh_heap
        while True:
            now = self.clock.monotonic()
            while heap and heap[0][0] <= now:
                _, _, item = heapq.heappop(heap)
                if isinstance(item, _Delivery):
                    self._start_attempt(item)
                else:
                    self._message_event(item.event_type, item.data, item.at_wall)
            if heap:
                due = heap[0][0]
                self._wh_sleep_until, self._wh_settled = due, True
                self._changed()
                try:
                    await self.clock.sleep(due - now)
                except asyncio.CancelledError:
                    if not self._wh_interrupted or self._wh_session is None:
                        raise
                    self._wh_interrupted = False
                    if sys.version_info >= (3, 11):
                        task = asyncio.current_task()
                        if task is not None:
                            task.uncancel()
            else:
                wake: asyncio.Future[None] = loop.create_future()
                self._wh_wake = wake
                self._wh_sleep_until, self._wh_settled = None, True
                self._changed()
                await wake
            self._wh_settled = False

    def _start_attempt(self, delivery: _Delivery) -> None:
        if not delivery.webhook.active:
            return  # disabled meanwhile: pending retries are dropped
        self._wh_inflight += 1
        self._spawn(self._attempt(delivery))

    async def _attempt(self, delivery: _Delivery) -> None:
        webhook, stats = delivery.webhook, self.stats
        try:
            delivery.attempts += 1
            status, _ = await self._post(
                webhook.url, delivery.body, self._signature(webhook, delivery.body)
            )
            if status == 200:
                webhook.deliveries += 1
                stats.deliveries += 1
                if delivery.duplicate:
                    delivery.duplicate = False
                    stats.duplicate_deliveries += 1
                    again, _ = await self._post(
                        webhook.url, delivery.body, self._signature(webhook, delivery.body)
                    )
                    if again == 200:
                        webhook.deliveries += 1
                        stats.deliveries += 1
                    else:  # the copy is not retried
                        webhook.failures += 1
                        stats.delivery_failures += 1
                return
            webhook.failures += 1
            stats.delivery_failures += 1
            schedule = self._retry_schedule
            if delivery.attempts >= len(schedule):
                if webhook.active:
                    webhook.active = False
                    stats.webhooks_disabled += 1
                    self._drop_retries(webhook)
                return
            if webhook.active:
                self._push(self.clock.monotonic() + schedule[delivery.attempts], delivery)
        finally:
            self._wh_inflight -= 1
            self._changed()

    @staticmethod
    def _signature(webhook: FakeWebhook, body: bytes) -> str | None:
        return None if webhook.secret is None else _sign(webhook.secret, body)

    # --- HTTP --------------------------------------------------------------------------------

    async def _post(self, url: str, body: bytes, signature: str | None) -> tuple[int | None, bytes]:
        """POST to a receiver: its status and body, or ``None`` without an answer in time."""
        session = self._wh_session
        if session is None:
            raise RuntimeError("FakeAPIMW is not started")
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
                allow_redirects=False,
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None, b""

    async def _handshake(self, webhook: FakeWebhook) -> bool:
        challenge = secrets.token_urlsafe(24)
        body = _event_json({"type": "webhook.verification", "challenge": challenge})
        status, answer = await self._post(webhook.url, body, self._signature(webhook, body))
        passed = status == 200 and _challenge_answered(answer, challenge)
        webhook.verified = passed
        if passed:
            self.stats.verifications += 1
        else:
            self.stats.verification_failures += 1
        return passed

    async def _background_handshake(self, webhook: FakeWebhook) -> None:
        try:
            await self._handshake(webhook)
        finally:
            self._wh_inflight -= 1
            self._changed()

    # --- endpoint ----------------------------------------------------------------------------

    @_endpoint("webhooks", "POST", "/webhooks")
    async def _handle_register_webhook(self, request: web.Request) -> _Reply:
        """``POST /webhooks``: register, answer 201, then verify ownership in the background."""
        body = await self._authorized_body(request)
        if isinstance(body, _Reply):
            return body
        url = body.get("url")
        if not isinstance(url, str) or not url:
            return _invalid("url is required: the HTTPS endpoint that receives the events")
        problem = _url_problem(url)
        if problem is not None:
            return _invalid(problem)
        events = body.get("events")
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) for e in events)
        ):
            return _invalid(
                'events must be a non-empty array of event types, e.g. ["message.read"]'
            )
        unknown = [e for e in events if e not in WEBHOOK_EVENTS]
        if unknown:
            expected = ", ".join(sorted(WEBHOOK_EVENTS))
            return _invalid(f"unknown event type {unknown[0]!r}; expected any of {expected}")
        secret = body.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            return _invalid("secret must be a non-empty string")
        active = body.get("active", True)
        if active is None:
            active = True
        if not isinstance(active, bool):
            return _invalid("active must be a boolean")
        webhook = FakeWebhook(
            id="whk_" + secrets.token_hex(12),
            url=url,
            events=tuple(dict.fromkeys(events)),
            active=active,
            created_at=_iso(self.clock.time()),
            secret=secret,
        )
        self._webhooks[webhook.id] = webhook
        self.stats.webhooks_registered += 1
        if not self.verify_webhooks:
            webhook.verified = True
        elif self._wh_session is not None:
            self._wh_inflight += 1
            self._spawn(self._background_handshake(webhook))
        return _ok(webhook.registration(), status=201)
