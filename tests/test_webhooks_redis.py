"""RedisWebhookQueue and RedisWebhookDedup against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from apimw_async import ConfigurationError, StoreUnavailableError
from apimw_async.webhooks import WebhookEvent, WebhookReceiver, WebhookReply

from .redis_server import RedisServer
from .test_webhooks import SECRET, event_body, signed

redis_mod = pytest.importorskip("redis")
from apimw_async.webhooks.redis import (  # noqa: E402
    RedisWebhookDedup,
    RedisWebhookQueue,
    WebhookQueueFullError,
)

QUICK: dict[str, Any] = {
    "claim_idle": 0.3,
    "retry_backoff": 0.01,
    "max_backoff": 0.05,
    "block": 0.2,
}


async def deliver(receiver: WebhookReceiver, body: bytes) -> WebhookReply:
    return await receiver.receive(body, signed(body))


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait on a condition that background consumers make true (polls; bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Handled:
    """Records handled event ids; ``fail`` maps an id to how many calls fail first."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[str | None] = []
        self.done: list[str | None] = []
        self.fail = dict(fail or {})

    async def __call__(self, event: WebhookEvent) -> None:
        self.calls.append(event.id)
        remaining = self.fail.get(event.id or "", 0)
        if remaining:
            self.fail[event.id or ""] = remaining - 1
            raise RuntimeError("handler failed")
        self.done.append(event.id)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    client = redis_mod.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def make_queue(redis_url: str, prefix: str, **options: Any) -> RedisWebhookQueue:
    return RedisWebhookQueue.from_url(redis_url, prefix=prefix, **{**QUICK, **options})


async def test_a_delivery_is_in_redis_before_the_200(
    redis_url: str, redis_prefix: str, raw: Any
) -> None:
    queue = make_queue(redis_url, redis_prefix)
    receiver = WebhookReceiver(SECRET, Handled(), queue=queue)  # consumers not started
    assert receiver.mode == "queue"
    reply = await deliver(receiver, event_body("evt_1"))
    assert reply.status == 200
    entries = await raw.xrange(queue.stream_key)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"b"] == event_body("evt_1")  # the exact bytes
    assert (fields[b"t"], fields[b"i"]) == (b"message.delivered", b"evt_1")
    assert await raw.get(queue.seen_key("message.delivered", "evt_1")) == b"d"
    assert queue.stream_key == f"{redis_prefix}:{{default}}:stream"
    assert receiver.stats.queued == 1
    await receiver.aclose()


async def test_redeliveries_to_other_workers_are_stored_once(
    redis_url: str, redis_prefix: str, raw: Any
) -> None:
    receivers = [
        WebhookReceiver(SECRET, Handled(), queue=make_queue(redis_url, redis_prefix))
        for _ in range(3)
    ]
    for receiver in receivers:
        assert (await deliver(receiver, event_body("evt_1"))).status == 200
    # Another type with the same id is another event; events without an id are never merged.
    assert (await deliver(receivers[0], event_body("evt_1", "message.read"))).status == 200
    for receiver in receivers[:2]:
        assert (await deliver(receiver, event_body(None))).status == 200
    assert await raw.xlen(f"{redis_prefix}:{{default}}:stream") == 4
    assert sum(r.stats.duplicates for r in receivers) == 2
    for receiver in receivers:
        await receiver.aclose()


async def test_consumers_handle_and_delete_entries(
    redis_url: str, redis_prefix: str, raw: Any
) -> None:
    handler = Handled()
    queue = make_queue(redis_url, redis_prefix)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    for i in range(20):  # stored before any consumer runs: read when it starts
        await deliver(receiver, event_body(f"evt_{i}"))
    await receiver.start()
    assert queue.running
    await wait_for(lambda: len(handler.done) == 20)
    await wait_for(lambda: queue.stats.handled == 20)
    info = await queue.info()
    assert (info.length, info.pending, info.dead) == (0, 0, 0)  # acknowledged and deleted
    assert sorted(handler.done) == sorted(f"evt_{i}" for i in range(20))
    assert info.consumers == 1
    await receiver.aclose()
    assert await raw.xlen(queue.stream_key) == 0
    # A consumer that closes holding nothing leaves the group.
    assert await raw.xinfo_consumers(queue.stream_key, queue.group) == []


async def test_a_failed_handler_is_retried_then_acknowledged(
    redis_url: str, redis_prefix: str
) -> None:
    handler = Handled(fail={"evt_1": 2})
    queue = make_queue(redis_url, redis_prefix, max_attempts=5)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    await receiver.start()
    await deliver(receiver, event_body("evt_1"))
    await wait_for(lambda: queue.stats.handled == 1)
    assert handler.calls == ["evt_1"] * 3
    assert (queue.stats.failed_attempts, queue.stats.retries) == (2, 2)
    assert receiver.stats.handler_errors == 2
    assert (await queue.info()).dead == 0
    await receiver.aclose()


async def test_an_always_failing_event_is_dead_lettered_and_can_be_replayed(
    redis_url: str, redis_prefix: str
) -> None:
    handler = Handled(fail={"evt_bad": 3})
    queue = make_queue(redis_url, redis_prefix, max_attempts=3)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    await receiver.start()
    await deliver(receiver, event_body("evt_bad"))
    await deliver(receiver, event_body("evt_ok"))
    await wait_for(lambda: queue.stats.dead_lettered == 1 and queue.stats.handled == 1)
    assert handler.calls.count("evt_bad") == 3
    letters = await queue.dead_letters()
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.event_type, letter.event_id, letter.attempts) == (
        "message.delivered",
        "evt_bad",
        3,
    )
    assert letter.error == "RuntimeError"
    assert letter.body == event_body("evt_bad")
    assert letter.event.id == "evt_bad"
    assert letter.failed_at > 0
    info = await queue.info()
    assert (info.length, info.pending, info.dead) == (0, 0, 1)
    # A redelivery of a dead-lettered event is not stored again (it is not lost either).
    assert (await deliver(receiver, event_body("evt_bad"))).status == 200
    assert receiver.stats.duplicates == 1
    # The handler is fixed (it now succeeds): replay runs it again with fresh attempts.
    assert await queue.replay() == 1
    await wait_for(lambda: queue.stats.handled == 2)
    assert handler.done == ["evt_ok", "evt_bad"]
    assert await queue.dead_letters() == []
    assert await queue.replay(["0-1"]) == 0
    await receiver.aclose()


async def test_dead_letters_can_be_discarded(redis_url: str, redis_prefix: str) -> None:
    handler = Handled(fail={"a": 9, "b": 9})
    queue = make_queue(redis_url, redis_prefix, max_attempts=1)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    await receiver.start()
    await deliver(receiver, event_body("a"))
    await deliver(receiver, event_body("b"))
    await wait_for(lambda: queue.stats.dead_lettered == 2)
    first, second = await queue.dead_letters()
    assert [letter.id for letter in await queue.dead_letters(after=first.id)] == [second.id]
    assert await queue.discard_dead_letters([first.id]) == 1
    assert await queue.discard_dead_letters() == 1
    assert await queue.dead_letters() == []
    await receiver.aclose()


async def test_entries_of_a_stopped_consumer_are_claimed_by_a_live_one(
    redis_url: str, redis_prefix: str
) -> None:
    stuck = asyncio.Event()
    started = asyncio.Event()

    async def hangs(event: WebhookEvent) -> None:
        started.set()
        await stuck.wait()

    first_queue = make_queue(redis_url, redis_prefix, claim_idle=0.2)
    first = WebhookReceiver(SECRET, hangs, queue=first_queue)
    await first.start()
    await deliver(first, event_body("evt_1"))
    await started.wait()
    # The consumer dies holding the entry (cancelled, never acknowledged).
    await first.aclose(timeout=0)
    assert first_queue.stats.left_at_close == 1
    handler = Handled()
    second_queue = make_queue(redis_url, redis_prefix, claim_idle=0.2)
    second = WebhookReceiver(SECRET, handler, queue=second_queue)
    await second.start()
    await wait_for(lambda: handler.done == ["evt_1"])
    assert second_queue.stats.claimed == 1
    assert second_queue.stats.read == 0
    await wait_for(lambda: second_queue.stats.handled == 1)
    info = await second_queue.info()
    assert (info.length, info.consumers) == (0, 2)  # the dead consumer is still registered
    # Consumers holding nothing and idle past the stale time are removed (normally after an
    # hour; the dead one holds nothing since its entry was claimed).
    await second_queue._forget_consumer(stale=0.001)
    assert (await second_queue.info()).consumers == 1
    await second.aclose()


async def test_a_long_handler_keeps_its_entry(redis_url: str, redis_prefix: str) -> None:
    # The holder touches its entries: a handler running longer than claim_idle is not taken
    # over by another consumer while its process is alive.
    release = asyncio.Event()
    calls: list[str] = []

    async def slow(event: WebhookEvent) -> None:
        calls.append("slow")
        await release.wait()

    async def other(event: WebhookEvent) -> None:
        calls.append("other")

    # Touched every claim_idle / 4: a loop stalled for 0.75 s would still keep it.
    queue_a = make_queue(redis_url, redis_prefix, claim_idle=1.0)
    queue_b = make_queue(redis_url, redis_prefix, claim_idle=1.0)
    receiver_a = WebhookReceiver(SECRET, slow, queue=queue_a)
    await receiver_a.start()
    await deliver(receiver_a, event_body("evt_1"))
    await wait_for(lambda: calls == ["slow"])
    receiver_b = WebhookReceiver(SECRET, other, queue=queue_b)
    await receiver_b.start()
    # Several claim periods of B pass while A holds the entry (nothing to wait on: time).
    await asyncio.sleep(2.5)
    assert calls == ["slow"]
    assert queue_b.stats.claimed == 0
    release.set()
    await wait_for(lambda: queue_a.stats.handled == 1)
    await receiver_a.aclose()
    await receiver_b.aclose()


async def test_a_full_stream_refuses_deliveries_instead_of_trimming(
    redis_url: str, redis_prefix: str
) -> None:
    queue = make_queue(redis_url, redis_prefix, max_length=3)
    receiver = WebhookReceiver(SECRET, Handled(), queue=queue)
    for i in range(3):
        assert (await deliver(receiver, event_body(f"evt_{i}"))).status == 200
    reply = await deliver(receiver, event_body("evt_3"))
    assert reply.status == 503
    assert queue.stats.refused_full == 1
    assert receiver.stats.queue_errors == 1
    with pytest.raises(WebhookQueueFullError):
        await queue.put(WebhookEvent(type="x", id="y"), b"{}")
    # Not marked as seen: once there is room, the redelivery is stored.
    await receiver.start()
    await wait_for(lambda: queue.stats.handled == 3)
    assert (await deliver(receiver, event_body("evt_3"))).status == 200
    await wait_for(lambda: queue.stats.handled == 4)
    await receiver.aclose()


async def test_redis_stopped_during_intake_answers_errors_then_resumes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    handler = Handled()
    queue = RedisWebhookQueue.from_url(redis_server.url, **QUICK)
    receiver = WebhookReceiver(SECRET, handler, queue=queue, answer_timeout=2.0)
    await receiver.start()
    assert (await deliver(receiver, event_body("before"))).status == 200
    await wait_for(lambda: handler.done == ["before"])
    redis_server.stop(kill=True)
    replies = [await deliver(receiver, event_body(f"during_{i}")) for i in range(5)]
    # None acknowledged: every one gets an error answer, so APIMW delivers it again.
    assert [r.status for r in replies] == [503] * 5
    assert receiver.stats.queue_errors == 5
    assert queue.stats.store_errors == 5
    assert "answered 503" in caplog.text
    redis_server.start()
    # Intake resumes (the consumer recreates the group on the empty server and reads again).
    for i in range(5):
        assert (await deliver(receiver, event_body(f"during_{i}"))).status == 200
    await wait_for(lambda: len(handler.done) == 6)
    assert sorted(handler.done) == ["before", *[f"during_{i}" for i in range(5)]]
    assert queue.stats.consumer_errors >= 1
    await receiver.aclose()


async def test_a_slow_redis_is_answered_within_the_deadline(
    redis_server: RedisServer,
) -> None:
    import os
    import signal

    queue = RedisWebhookQueue.from_url(redis_server.url, **QUICK)
    receiver = WebhookReceiver(SECRET, Handled(), queue=queue, answer_timeout=0.3)
    assert (await deliver(receiver, event_body("warm"))).status == 200
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # up but not answering
    try:
        reply = await deliver(receiver, event_body("frozen"))
        assert reply.status == 503
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    await receiver.aclose()


async def test_user_made_client(redis_url: str, redis_prefix: str) -> None:
    client = redis_mod.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    handler = Handled()
    queue = RedisWebhookQueue(client, prefix=redis_prefix, name="acct-1", **QUICK)
    assert queue.stream_key == f"{redis_prefix}:{{acct-1}}:stream"
    assert queue.dead_key == f"{redis_prefix}:{{acct-1}}:dead"
    assert queue.seen_key("t", "i").startswith(f"{redis_prefix}:{{acct-1}}:seen:")
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    await receiver.start()
    await deliver(receiver, event_body("evt_1"))
    await wait_for(lambda: handler.done == ["evt_1"])
    await receiver.aclose()
    assert await client.ping()  # the user's client is the user's to close
    await client.aclose()


async def test_a_client_you_pass_is_bound_to_its_event_loop(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis_mod.asyncio.Redis.from_url(redis_url)
    queue = RedisWebhookQueue(client, prefix=redis_prefix, **QUICK)
    dedup = RedisWebhookDedup(client, prefix=redis_prefix)
    event = WebhookEvent(type="message.delivered", id="evt_1")
    try:
        assert await queue.put(event, event_body("evt_1"))  # first used here: bound here
        assert await dedup.claim(("message.read", "evt_1"), hold=None) == "new"
        errors: list[BaseException] = []

        def other_loop() -> None:
            async def use() -> None:
                calls = (
                    queue.put(event, event_body("evt_1")),
                    queue.start(Handled()),  # at once, not in a consumer task left to die
                    dedup.claim(("message.read", "evt_2"), hold=None),
                )
                for call in calls:
                    try:
                        await call
                    except ConfigurationError as exc:
                        errors.append(exc)

            asyncio.run(use())

        thread = threading.Thread(target=other_loop)
        thread.start()
        thread.join(30)
        assert [type(exc) for exc in errors] == [ConfigurationError] * 3
        for exc, owner in zip(
            errors, ["RedisWebhookQueue"] * 2 + ["RedisWebhookDedup"], strict=True
        ):
            assert str(exc).startswith(f"{owner}: the Redis client you passed is bound to the ")
            assert f"{owner}.from_url()" in str(exc)
        assert not queue.running
        # This loop goes on with it, and closing them leaves it open for its owner.
        assert not await queue.put(event, event_body("evt_1"))  # a duplicate
        assert await dedup.claim(("message.read", "evt_1"), hold=None) == "done"
        await queue.aclose()
        await dedup.aclose()
        assert await client.ping()
    finally:
        await client.aclose()


def _in_forked_child(use: Callable[[], Awaitable[str]]) -> tuple[int, str]:
    """Run ``use()`` in a child made by ``os.fork()`` (in its own event loop): the child's
    exit code and the answer it wrote to a pipe."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, asyncio.run(use()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], 60)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("the forked child did not answer in time")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_client_you_pass_is_bound_to_the_process_that_first_used_it(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis_mod.asyncio.Redis.from_url(redis_url)
    queue = RedisWebhookQueue(client, prefix=redis_prefix, **QUICK)
    dedup = RedisWebhookDedup(client, prefix=redis_prefix, name="dedup")  # not the queue's keys

    async def use(event_id: str) -> str:
        answers = []
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("queue", lambda: queue.put(WebhookEvent(type="t", id=event_id), b"{}")),
            ("dedup", lambda: dedup.claim(("t", event_id), hold=None)),
        ]
        for name, call in calls:
            try:
                answers.append(f"{name}: {await call()}")
            except ConfigurationError as exc:
                answers.append(f"{name}: ConfigurationError: {exc}")
        return "\n".join(answers)

    try:
        # Made before the fork and never used here (an app preloaded by its server): the
        # child may adopt it.
        assert _in_forked_child(lambda: use("child-1")) == (0, "queue: True\ndedup: new")
        assert await use("parent") == "queue: True\ndedup: new"
        # Used here: its connections are this process's; a child must not touch them.
        code, answer = _in_forked_child(lambda: use("child-2"))
        assert code == 0
        lines = answer.splitlines()
        assert [line.split(": ")[:2] for line in lines] == [
            ["queue", "ConfigurationError"],
            ["dedup", "ConfigurationError"],
        ]
        assert all("used in the parent process" in line for line in lines)
        assert all("from_url()" in line for line in lines)
        # The parent's connections still work, and the refused child stored nothing.
        assert await use("parent-2") == "queue: True\ndedup: new"
        assert await client.xlen(queue.stream_key) == 3
        await queue.aclose()
        await dedup.aclose()
    finally:
        await client.aclose()


async def test_queue_configuration_errors(redis_url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisWebhookQueue()
    with pytest.raises(ConfigurationError):
        RedisWebhookQueue.from_url("http://not-redis")
    for bad in (
        {"claim_idle": 0},
        {"max_attempts": 0},
        {"max_length": -1},
        {"name": "a b"},
        {"name": "{x}"},
        {"prefix": ""},
        {"dedup_ttl": -1},
        {"dedup_ttl": float("inf")},
        {"claim_idle": "30"},
        {"block": 5.0, "socket_timeout": 1.0},
    ):
        with pytest.raises(ConfigurationError):
            RedisWebhookQueue.from_url(redis_url, **bad)
    queue = RedisWebhookQueue.from_url("redis://:hunter2pass@127.0.0.1:1/0")
    assert "hunter2pass" not in repr(queue)
    with pytest.raises(ConfigurationError):
        WebhookReceiver(SECRET, Handled(), queue=queue, mode="handoff")


@pytest.mark.parametrize("cls", [RedisWebhookQueue, RedisWebhookDedup])
def test_queue_and_dedup_check_their_client_alike(cls: Any) -> None:
    from redis.asyncio import Redis

    with pytest.raises(ConfigurationError, match="needs a client or a url"):
        cls()
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        cls.from_url("http://not-redis")
    with pytest.raises(ConfigurationError, match=r"must be a redis\.asyncio Redis"):
        cls(object())
    with pytest.raises(ConfigurationError, match="go with a url"):
        cls(Redis(), socket_keepalive=True)
    assert "hunter2pass" not in repr(cls.from_url("redis://:hunter2pass@[::1]:1/0"))
    assert "[::1]:1/0" in repr(cls.from_url("redis://:hunter2pass@[::1]:1/0"))


async def test_unreachable_redis_is_a_store_error(redis_server: RedisServer) -> None:
    redis_server.stop()
    queue = RedisWebhookQueue.from_url(redis_server.url)
    with pytest.raises(StoreUnavailableError):
        await queue.put(WebhookEvent(type="x", id="y"), b"{}")
    with pytest.raises(StoreUnavailableError):
        await queue.dead_letters()
    await queue.aclose()


# --- fleet-wide de-duplication without the queue ---------------------------------------------


async def test_redis_dedup_across_handoff_receivers(redis_url: str, redis_prefix: str) -> None:
    handlers = [Handled(fail={"evt_f": 1}), Handled()]
    dedups = [RedisWebhookDedup.from_url(redis_url, prefix=redis_prefix) for _ in handlers]
    receivers = [
        WebhookReceiver(SECRET, h, mode="handoff", dedup=d)
        for h, d in zip(handlers, dedups, strict=True)
    ]
    assert (await deliver(receivers[0], event_body("evt_1"))).status == 200
    # The redelivery lands on another worker: acknowledged, not handled again.
    assert (await deliver(receivers[1], event_body("evt_1"))).status == 200
    assert receivers[1].stats.duplicates == 1
    # A failed hand-off releases its mark: the redelivery elsewhere runs it.
    assert (await deliver(receivers[0], event_body("evt_f"))).status == 500
    assert (await deliver(receivers[1], event_body("evt_f"))).status == 200
    assert handlers[0].done == ["evt_1"]
    assert handlers[1].done == ["evt_f"]
    for receiver, dedup in zip(receivers, dedups, strict=True):
        await receiver.aclose()
        await dedup.aclose()


async def test_redis_dedup_busy_mark_expires(redis_url: str, redis_prefix: str) -> None:
    dedup = RedisWebhookDedup.from_url(redis_url, prefix=redis_prefix, ttl=60)
    key = ("message.read", "evt_1")
    assert await dedup.claim(key, hold=0.05) == "new"
    assert await dedup.claim(key, hold=0.05) == "busy"
    # The holder died: its mark expires on Redis's clock, then the event can be claimed.
    for _ in range(500):
        state = await dedup.claim(key, hold=5)
        if state != "busy":
            break
        await asyncio.sleep(0.01)
    assert state == "new"
    await dedup.confirm(key)
    assert await dedup.claim(key, hold=5) == "done"
    await dedup.release(key)  # only an in-progress mark is released
    assert await dedup.claim(key, hold=5) == "done"
    await dedup.aclose()


async def test_redis_dedup_down_fails_open(redis_server: RedisServer) -> None:
    dedup = RedisWebhookDedup.from_url(redis_server.url)
    handler = Handled()
    receiver = WebhookReceiver(SECRET, handler, dedup=dedup)
    redis_server.stop()
    assert (await deliver(receiver, event_body("evt_1"))).status == 200
    await receiver.drain()
    assert handler.done == ["evt_1"]
    assert receiver.stats.dedup_errors == 1
    await receiver.aclose()


# --- framework adapters start the consumers ---------------------------------------------------


async def test_fastapi_router_starts_and_stops_the_queue(redis_url: str, redis_prefix: str) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import aiohttp
    from fastapi import FastAPI

    from apimw_async.fastapi import webhook_router

    from .test_fastapi import serve

    handler = Handled()
    queue = make_queue(redis_url, redis_prefix)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    app = FastAPI()
    app.include_router(webhook_router(receiver))
    async with serve(app) as base:
        assert queue.running  # started by the router's lifespan
        body = event_body("evt_fastapi")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/webhooks", data=body, headers=signed(body)) as resp,
        ):
            assert resp.status == 200
        await wait_for(lambda: handler.done == ["evt_fastapi"])
    assert receiver.closed
    assert not queue.running


async def test_aiohttp_app_starts_and_stops_the_queue(redis_url: str, redis_prefix: str) -> None:
    import aiohttp
    from aiohttp import web

    from apimw_async.webhooks import make_aiohttp_app

    handler = Handled()
    queue = make_queue(redis_url, redis_prefix)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    runner = web.AppRunner(make_aiohttp_app(receiver))
    await runner.setup()
    try:
        assert queue.running
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks"
        body = event_body("evt_aiohttp")
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=signed(body)) as resp:
                assert resp.status == 200
            challenge = b'{"type": "webhook.verification", "challenge": "c1"}'
            async with http.post(url, data=challenge) as resp:
                assert await resp.read() == b"c1"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
        await wait_for(lambda: handler.done == ["evt_aiohttp"])
    finally:
        await runner.cleanup()
    assert not queue.running


# --- Redis Cluster -------------------------------------------------------------------------------


async def test_queue_and_dedup_on_a_redis_cluster(redis_cluster_url: str) -> None:
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(redis_cluster_url, socket_timeout=5)
    prefix = f"apimw-test-{uuid.uuid4().hex[:12]}"
    try:
        # Several names: their keys hash to different slots (nodes); each script stays in one.
        for name in ("acct-1", "acct-2", "acct-3"):
            handler = Handled(fail={f"{name}-bad": 99})
            queue = RedisWebhookQueue(client, prefix=prefix, name=name, max_attempts=2, **QUICK)
            receiver = WebhookReceiver(SECRET, handler, queue=queue)
            await receiver.start()
            for event_id in (f"{name}-1", f"{name}-2", f"{name}-1", f"{name}-bad"):
                assert (await deliver(receiver, event_body(event_id))).status == 200
            await wait_for(lambda q=queue: q.stats.handled == 2 and q.stats.dead_lettered == 1)
            assert queue.stats.duplicates == 1
            letters = await queue.dead_letters()
            assert [letter.event_id for letter in letters] == [f"{name}-bad"]
            handler.fail.clear()
            assert await queue.replay() == 1
            await wait_for(lambda q=queue: q.stats.handled == 3)
            info = await queue.info()
            assert (info.length, info.pending, info.dead) == (0, 0, 0)
            await receiver.aclose()
        dedup = RedisWebhookDedup(client, prefix=prefix, name="acct-1")
        assert await dedup.claim(("message.read", "e"), hold=5) == "new"
        assert await dedup.claim(("message.read", "e"), hold=5) == "busy"
        await dedup.release(("message.read", "e"))
        assert await dedup.claim(("message.read", "e"), hold=None) == "new"
        assert await dedup.claim(("message.read", "e"), hold=None) == "done"
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        for key in keys:
            await client.delete(key)
        await client.aclose()


# --- fork after use ------------------------------------------------------------------------------


def _forked_put(queue: RedisWebhookQueue, event_id: str, result_path: str) -> None:
    """A forked child: store one delivery through the parent's queue object."""
    outcome = "crash"
    try:
        event = WebhookEvent(type="message.delivered", id=event_id)
        outcome = str(asyncio.run(queue.put(event, event_body(event_id))))
    finally:
        Path(result_path).write_text(outcome)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_forked_children_use_their_own_connections(
    redis_url: str, redis_prefix: str, raw: Any, tmp_path: Path
) -> None:
    import multiprocessing
    import warnings

    handler = Handled()
    queue = make_queue(redis_url, redis_prefix)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    await deliver(receiver, event_body("parent-1"))  # the parent's pool has a connection now
    ctx = multiprocessing.get_context("fork")
    processes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        for index in range(2):
            path = tmp_path / f"child-{index}"
            process = ctx.Process(target=_forked_put, args=(queue, f"child-{index}", str(path)))
            process.start()
            processes.append((process, path))
    await wait_for(lambda: all(p.exitcode is not None for p, _ in processes), timeout=60)
    assert [(p.exitcode, path.read_text()) for p, path in processes] == [(0, "True")] * 2
    # The children neither used nor closed the parent's connections: the parent goes on.
    await deliver(receiver, event_body("parent-2"))
    assert await raw.xlen(queue.stream_key) == 4
    await receiver.start()
    await wait_for(lambda: len(handler.calls) == 4)
    assert sorted(handler.done) == ["child-0", "child-1", "parent-1", "parent-2"]
    await receiver.aclose()


async def test_no_secret_in_logs_reprs_or_errors(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "redis-pass-0123456789"
    url = redis_server.url.replace("redis://", f"redis://:{password}@")
    handler = Handled(fail={"evt_1": 9})
    queue = RedisWebhookQueue.from_url(url, max_attempts=1, **QUICK)
    receiver = WebhookReceiver(SECRET, handler, queue=queue)
    redis_server.stop()  # every Redis call fails
    assert (await deliver(receiver, event_body("evt_1"))).status == 503
    with pytest.raises(StoreUnavailableError) as caught:
        await queue.put(WebhookEvent(type="t", id="i"), b"{}")
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    texts = [repr(receiver), repr(queue), caplog.text, *(str(e) for e in chain)]
    texts += [repr(e.args) for e in chain]
    for text in texts:
        assert SECRET not in text
        assert password not in text
    await receiver.aclose()
