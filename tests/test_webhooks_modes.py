"""Receiver modes without Redis: hand-off, bounded concurrency and back-pressure, challenge
opt-ins, and the de-duplication contract (claim / confirm / release)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from apimw_async import ConfigurationError
from apimw_async.webhooks import (
    DEFAULT_ANSWER_TIMEOUT,
    MemoryWebhookDedup,
    WebhookEvent,
    WebhookReceiver,
    WebhookReply,
)

from .test_webhooks import CHALLENGE, SECRET, Recorder, event_body, signed

LOGGER = "apimw_async.webhooks"


async def deliver(receiver: WebhookReceiver, body: bytes) -> WebhookReply:
    return await receiver.receive(body, signed(body))


class Failing:
    """Fails the first ``failures`` calls, then records."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.handled: list[str | None] = []

    async def __call__(self, event: WebhookEvent) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("downstream queue refused")
        self.handled.append(event.id)


# --- hand-off ----------------------------------------------------------------------------------


async def test_handoff_runs_the_handler_before_answering() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, mode="handoff")
    assert receiver.mode == "handoff"
    reply = await deliver(receiver, event_body("evt_1"))
    # The handler finished before the answer was returned: nothing runs in the background.
    assert reply.status == 200
    assert [e.id for e in handler.finished] == ["evt_1"]
    assert receiver.pending == 0
    # A redelivery after success is a duplicate: 200, not handled again.
    assert (await deliver(receiver, event_body("evt_1"))).status == 200
    assert len(handler.events) == 1
    assert receiver.stats.duplicates == 1
    await receiver.aclose()


async def test_handoff_failure_answers_an_error_and_the_redelivery_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    handler = Failing(failures=1)
    errors: list[str] = []
    receiver = WebhookReceiver(
        SECRET, handler, mode="handoff", on_error=lambda e, exc: errors.append(type(exc).__name__)
    )
    first = await deliver(receiver, event_body("evt_1"))
    assert first.status == 500  # APIMW redelivers
    assert receiver.stats.handoff_failures == 1
    assert errors == ["RuntimeError"]
    # The failed event's mark was released: the redelivery is handled, not suppressed.
    second = await deliver(receiver, event_body("evt_1"))
    assert second.status == 200
    assert handler.handled == ["evt_1"]
    assert receiver.stats.duplicates == 0
    await receiver.aclose()


async def test_handoff_overrun_is_cancelled_and_answered_with_an_error() -> None:
    never = asyncio.Event()
    handler = Recorder(never)
    receiver = WebhookReceiver(SECRET, handler, mode="handoff", answer_timeout=0.05)
    reply = await deliver(receiver, event_body("evt_slow"))
    assert reply.status == 500
    assert [e.id for e in handler.cancelled] == ["evt_slow"]
    assert receiver.stats.handoff_failures == 1
    assert receiver.stats.handler_errors == 1
    # Not remembered as handled: a redelivery runs the handler again.
    never.set()
    assert (await deliver(receiver, event_body("evt_slow"))).status == 200
    assert [e.id for e in handler.finished] == ["evt_slow"]
    await receiver.aclose()


async def test_handoff_redelivery_during_handling_is_told_to_come_back() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler, mode="handoff")
    first = asyncio.ensure_future(deliver(receiver, event_body("evt_1")))
    await handler.started.wait()
    # Acknowledging now could lose the event if the first handling fails; running it twice
    # at once is what de-duplication is for: 503, APIMW delivers again later.
    assert (await deliver(receiver, event_body("evt_1"))).status == 503
    assert receiver.stats.in_flight_duplicates == 1
    gate.set()
    assert (await first).status == 200
    assert len(handler.events) == 1
    await receiver.aclose()


# --- bounded concurrency ------------------------------------------------------------------------


async def test_memory_mode_bounds_handler_concurrency_with_back_pressure() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler, max_concurrency=2)
    for i in range(2):
        assert (await deliver(receiver, event_body(f"evt_{i}"))).status == 200
    assert receiver.pending == 2
    # The third waits for a slot (back-pressure) instead of becoming a third task ...
    third = asyncio.ensure_future(deliver(receiver, event_body("evt_2")))
    await asyncio.sleep(0)
    assert not third.done()
    assert receiver.pending == 2
    # ... and is acknowledged as soon as one frees up.
    gate.set()
    assert (await third).status == 200
    await receiver.drain()
    assert sorted(e.id or "" for e in handler.finished) == ["evt_0", "evt_1", "evt_2"]
    await receiver.aclose()


async def test_memory_mode_answers_503_when_no_slot_frees_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler, max_concurrency=1, answer_timeout=0.05)
    assert (await deliver(receiver, event_body("evt_0"))).status == 200
    reply = await deliver(receiver, event_body("evt_1"))
    assert reply.status == 503
    assert receiver.stats.overloaded == 1
    assert "saturated" in caplog.text
    assert "503" in caplog.text
    # The refused event is not remembered: its redelivery is handled.
    gate.set()
    await receiver.drain()
    assert (await deliver(receiver, event_body("evt_1"))).status == 200
    await receiver.drain()
    assert [e.id for e in handler.finished] == ["evt_0", "evt_1"]
    await receiver.aclose()


async def test_handoff_concurrency_is_bounded_too() -> None:
    gate = asyncio.Event()
    three = asyncio.Event()
    running = 0
    peak = 0

    async def handler(event: WebhookEvent) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three.set()
        await gate.wait()
        running -= 1

    receiver = WebhookReceiver(SECRET, handler, mode="handoff", max_concurrency=3)
    replies = [asyncio.ensure_future(deliver(receiver, event_body(f"e{i}"))) for i in range(10)]
    await three.wait()
    for _ in range(5):
        await asyncio.sleep(0)
    assert running == 3
    gate.set()
    assert [r.status for r in await asyncio.gather(*replies)] == [200] * 10
    assert peak == 3
    await receiver.aclose()


# --- challenge opt-ins ----------------------------------------------------------------------


async def test_challenge_answer_carries_nosniff() -> None:
    for style in ("text", "json"):
        receiver = WebhookReceiver(SECRET, Recorder(), challenge_response=style)  # type: ignore[arg-type]
        reply = await receiver.receive(CHALLENGE, {})
        assert reply.status == 200
        assert ("X-Content-Type-Options", "nosniff") in reply.headers


async def test_require_signed_challenge() -> None:
    receiver = WebhookReceiver(SECRET, Recorder(), require_signed_challenge=True)
    assert (await receiver.receive(CHALLENGE, {})).status == 401
    assert receiver.stats.challenges == 0
    signed_reply = await receiver.receive(CHALLENGE, signed(CHALLENGE))
    assert signed_reply.status == 200
    assert signed_reply.body == b"ch_abc"
    # Default: an unsigned challenge is answered (the docs do not say it is signed).
    assert (await WebhookReceiver(SECRET, Recorder()).receive(CHALLENGE, {})).status == 200


# --- de-duplication contract ------------------------------------------------------------------


async def test_memory_dedup_claim_confirm_release() -> None:
    dedup = MemoryWebhookDedup(10)
    key = ("message.read", "evt_1")
    assert await dedup.claim(key, hold=3.0) == "new"
    assert await dedup.claim(key, hold=3.0) == "busy"
    await dedup.release(key)
    assert await dedup.claim(key, hold=3.0) == "new"
    await dedup.confirm(key)
    assert await dedup.claim(key, hold=3.0) == "done"
    assert await dedup.claim(("message.read", "evt_2"), hold=None) == "new"
    assert await dedup.claim(("message.read", "evt_2"), hold=None) == "done"


class BrokenDedup:
    async def claim(self, key: tuple[str, str], hold: float | None) -> str:
        raise OSError("dedup store down")

    async def confirm(self, key: tuple[str, str]) -> None:
        raise OSError("dedup store down")

    async def release(self, key: tuple[str, str]) -> None:
        raise OSError("dedup store down")


async def test_a_failing_dedup_fails_open() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, mode="handoff", dedup=BrokenDedup())  # type: ignore[arg-type]
    assert (await deliver(receiver, event_body("evt_1"))).status == 200
    assert len(handler.finished) == 1
    assert receiver.stats.dedup_errors == 2  # the claim and the confirm
    await receiver.aclose()


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "later"},
        {"answer_timeout": 0},
        {"answer_timeout": 5.0},
        {"answer_timeout": True},
        {"max_concurrency": 0},
        {"max_concurrency": 2.5},
        {"dedup": object()},
        {"queue": object()},
    ],
)
def test_bad_receiver_options_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        WebhookReceiver(SECRET, Recorder(), **options)  # type: ignore[arg-type]


def test_default_answer_timeout_is_safely_under_apimws_budget() -> None:
    assert 0 < DEFAULT_ANSWER_TIMEOUT <= 3.5


async def test_start_without_a_queue_is_harmless_and_closed_receiver_cannot_start() -> None:
    receiver = WebhookReceiver(SECRET, Recorder())
    await receiver.start()
    await receiver.start()
    await receiver.aclose()
    with pytest.raises(ConfigurationError):
        await receiver.start()


# --- what a store failure says in the log -------------------------------------------------------


class RefusingQueue:
    """A queue that cannot store anything, failing with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def put(self, event: WebhookEvent, raw_body: bytes) -> bool:
        raise self.error

    async def start(self, handler: object, *, concurrency: int) -> None:
        return None

    async def aclose(self, timeout: float | None = None) -> None:
        return None


async def test_a_store_failure_of_ours_is_logged_with_its_advice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    advice = "RedisWebhookQueue: this client was used in the parent process; use from_url()"
    receiver = WebhookReceiver(SECRET, Recorder(), queue=RefusingQueue(ConfigurationError(advice)))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reply = await deliver(receiver, event_body("evt_1"))
    assert reply.status == 503
    assert receiver.stats.queue_errors == 1
    assert any(advice in record.getMessage() for record in caplog.records)
    await receiver.aclose()


async def test_a_foreign_store_failure_is_logged_by_its_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Another library's text may carry a connection URL with its password.
    secret_url = "redis://:hunter2-password@10.0.0.5:6379/0"
    receiver = WebhookReceiver(SECRET, Recorder(), queue=RefusingQueue(OSError(secret_url)))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reply = await deliver(receiver, event_body("evt_1"))
    assert reply.status == 503
    messages = [record.getMessage() for record in caplog.records]
    assert any("OSError" in message for message in messages)
    assert not any("hunter2" in message for message in messages)
    await receiver.aclose()
