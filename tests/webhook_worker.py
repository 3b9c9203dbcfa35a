"""A webhook worker process for tests/test_webhooks_fleet.py (and the example's shape).

``python -m tests.webhook_worker REDIS_URL PREFIX SECRET`` serves a durable
:class:`~apimw_async.webhooks.WebhookReceiver` on a free loopback port, prints ``PORT <n>``
once it listens, and runs the queue's consumers. The handler is idempotent: it records the
event's ``type|id`` in a Redis set (the record) and counts its calls in a hash (to see how
often events were handled more than once). On SIGTERM it shuts down cleanly and writes its
queue counters to ``PREFIX:stats`` (field: pid).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys

from aiohttp import web

from apimw_async.webhooks import WebhookEvent, WebhookReceiver, make_aiohttp_app
from apimw_async.webhooks.redis import RedisWebhookQueue


def main(argv: list[str]) -> None:
    redis_url, prefix, secret = argv[:3]
    claim_idle = float(argv[3]) if len(argv) > 3 else 1.0
    queue = RedisWebhookQueue.from_url(
        redis_url,
        prefix=prefix,
        claim_idle=claim_idle,
        max_attempts=10,
        retry_backoff=0.05,
        block=0.2,
    )
    record_key = f"{prefix}:handled"
    calls_key = f"{prefix}:calls"
    import redis.asyncio as aioredis

    holder: dict[str, aioredis.Redis] = {}

    async def on_event(event: WebhookEvent) -> None:
        client = holder["client"]
        key = f"{event.type}|{event.id}"
        # A short, random "work" time, so a SIGKILL lands while entries are in hand.
        await asyncio.sleep(random.uniform(0, 0.004))
        async with client.pipeline(transaction=True) as pipe:
            pipe.sadd(record_key, key)
            pipe.hincrby(calls_key, key, 1)
            await pipe.execute()

    receiver = WebhookReceiver(secret, on_event, queue=queue, max_concurrency=50)
    app = make_aiohttp_app(receiver, path="/webhooks", close_timeout=5.0)

    async def open_client(_: web.Application) -> None:
        holder["client"] = aioredis.Redis.from_url(redis_url)

    async def write_stats(_: web.Application) -> None:
        stats = {**queue.stats.as_dict(), "consumer": queue.consumer}
        await holder["client"].hset(f"{prefix}:stats", str(os.getpid()), json.dumps(stats))
        await holder["client"].aclose()

    app.on_startup.insert(0, open_client)
    app.on_cleanup.append(write_stats)
    asyncio.run(serve(app))


async def serve(app: web.Application) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.AppRunner(app)
    await runner.setup()  # runs on_startup: the receiver's consumers start
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()  # closes the receiver, then writes the counters


if __name__ == "__main__":
    main(sys.argv[1:])
