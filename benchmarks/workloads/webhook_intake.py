"""Webhook intake: how fast a receiver answers signed deliveries, durable vs in memory.

Rows: ``memory`` (the default receiver: 200, then the handler in the background; the
baseline), ``handoff`` (the trivial handler runs before the answer) and ``redis-queue`` (the
delivery is stored in a Redis Stream before the 200; the consumers of the same process handle
it). Each run serves the receiver with aiohttp on loopback and sends ``count`` signed deliveries
from ``workers`` concurrent senders (closed loop) in the same process, so every row pays the
same client and server costs. The bar is APIMW's: an answer within 5 s, so "max ms" against
5,000 matters more than the throughput ratio. ``drain s`` is how long after the last answer the
queue's consumers took to finish handling (0 for the in-memory rows, whose handler is trivial).

Needs ``redis-server`` on PATH for the ``redis-queue`` row (left out otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web

from apimw_async.webhooks import WebhookEvent, WebhookReceiver, make_aiohttp_app, sign

from .common import Context, Run, other_load, percentile, wait_for_idle

__all__ = ["run_webhook_intake"]

NAME = "webhook-intake"
SECRET = "whsec_benchmark_secret"
BUDGET_MS = 5000.0


@contextlib.contextmanager
def _redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603
        try:
            for _ in range(100):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.5) as s,
                ):
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


def _bodies(count: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for i in range(count):
        body = json.dumps(
            {
                "type": "message.delivered",
                "id": f"evt_{uuid.uuid4().hex}",
                "timestamp": "2026-01-01T00:00:00Z",
                "data": {"message_id": f"wamid.{i}", "status": "delivered"},
            }
        ).encode()
        out.append((body, {"X-APIMW-Signature": sign(SECRET, body)}))
    return out


async def _one(row: str, rep: int, count: int, workers: int, redis_url: str | None) -> Run:
    handled = 0
    all_handled = asyncio.Event()

    async def on_event(event: WebhookEvent) -> None:
        nonlocal handled
        handled += 1
        if handled >= count:
            all_handled.set()

    queue: Any = None
    if row == "redis-queue":
        from apimw_async.webhooks.redis import RedisWebhookQueue

        assert redis_url is not None
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        queue = RedisWebhookQueue.from_url(redis_url, prefix=prefix)
        receiver = WebhookReceiver(SECRET, on_event, queue=queue)
    else:
        mode = "handoff" if row == "handoff" else "background"
        receiver = WebhookReceiver(SECRET, on_event, mode=mode)  # type: ignore[arg-type]
    runner = web.AppRunner(make_aiohttp_app(receiver), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks"
    deliveries = _bodies(count)
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, errors
        while next_index < count:
            body, headers = deliveries[next_index]
            next_index += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    load = asyncio.ensure_future(other_load(0.5))
    connector = aiohttp.TCPConnector(limit=workers)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.perf_counter()
            await asyncio.gather(*(sender(session) for _ in range(workers)))
            elapsed = time.perf_counter() - started
        answered = time.perf_counter()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_handled.wait(), 60)
        drain = time.perf_counter() - answered if row == "redis-queue" else 0.0
    finally:
        await runner.cleanup()
        if queue is not None:
            with contextlib.suppress(Exception):
                import redis.asyncio as aioredis

                client = aioredis.Redis.from_url(redis_url)
                keys = [k async for k in client.scan_iter(f"{prefix}:*", count=1000)]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start : start + 1000])
                await client.aclose()
            await queue.aclose()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return Run(
        NAME,
        f"{count} signed deliveries, {workers} concurrent senders",
        row,
        rep,
        {
            "deliveries": count,
            "errors": errors,
            "handled": handled,
            "rps": count / elapsed if elapsed else 0.0,
            "p50_ms": percentile(ms, 0.50),
            "p99_ms": percentile(ms, 0.99),
            "max_ms": ms[-1] if ms else 0.0,
            "budget_pct": (ms[-1] if ms else 0.0) / BUDGET_MS * 100,
            "drain_s": drain,
            "other_load": await load,
        },
    )


async def run_webhook_intake(ctx: Context) -> list[Run]:
    count = 1000 if ctx.quick else 5000
    workers = 32
    runs: list[Run] = []
    with _redis_server() as redis_url:
        rows = ["memory", "handoff"]
        if redis_url is None:
            ctx.log("webhook-intake: redis-server not on PATH, the redis-queue row is left out")
        else:
            rows.append("redis-queue")
        for rep in range(ctx.reps):
            for row in rows:  # alternating, run by run
                await wait_for_idle(ctx)
                run = await _one(row, rep, count, workers, redis_url)
                ctx.log(
                    f"webhook-intake {row} rep {rep}: {run.metrics['rps']:.0f}/s, "
                    f"p99 {run.metrics['p99_ms']:.1f} ms, max {run.metrics['max_ms']:.0f} ms"
                )
                runs.append(run)
    return runs
