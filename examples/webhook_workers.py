"""Durable webhook intake: several worker processes, one Redis Stream, each event handled once.

    python examples/webhook_workers.py [--workers 3] [--messages 100] [--quick]

Starts everything it needs: a throw-away ``redis-server`` (or ``--redis-url``), a fake APIMW
server in this process, ``--workers`` web worker processes, each serving a
:class:`~apimw_async.webhooks.WebhookReceiver` backed by a
:class:`~apimw_async.webhooks.redis.RedisWebhookQueue` on its own port, and one
consumer-only process that serves no HTTP and only runs handlers. One webhook is registered
per web worker (same secret), so every inbound message is delivered to *every* worker, some
of them twice (``duplicate_deliveries``): the receivers store each event once, before
answering 200, and the consumers of all processes handle it once. It prints what the server
delivered and what the handlers did.

In production a worker does just this::

    queue = RedisWebhookQueue.from_url(os.environ["REDIS_URL"], claim_idle=60, max_attempts=5)
    receiver = WebhookReceiver(os.environ["APIMW_WEBHOOK_SECRET"], on_event, queue=queue)
    web.run_app(make_aiohttp_app(receiver))          # starts the consumers at startup

Needs ``pip install 'apimw-async[redis]'`` and ``redis-server`` on PATH unless
``--redis-url`` points at a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import sys
from typing import Any

from aiohttp import web
from fleet_workers import redis_server  # the throw-away redis-server of the other example

from apimw_async import Client, Credentials
from apimw_async.testing import FakeAPIMW
from apimw_async.webhooks import MessageEvent, WebhookEvent, WebhookReceiver, make_aiohttp_app
from apimw_async.webhooks.redis import RedisWebhookQueue

SECRET = "whsec_example_webhook_secret"
PREFIX = "apimw-example-webhooks"

# --- one worker process -----------------------------------------------------------------------


async def run_worker(redis_url: str, serve_http: bool, ports: Any, stop: Any) -> None:
    import redis.asyncio as aioredis

    record = aioredis.Redis.from_url(redis_url)
    role = "web" if serve_http else "consumer-only"

    async def on_event(event: WebhookEvent) -> None:
        # Idempotent: a set of handled event ids; the hash counts who handled what.
        if isinstance(event, MessageEvent):
            await record.sadd(f"{PREFIX}:handled", event.id or "")
            await record.hincrby(f"{PREFIX}:by-role", role, 1)

    queue = RedisWebhookQueue.from_url(redis_url, prefix=PREFIX, claim_idle=5.0)
    receiver = WebhookReceiver(SECRET, on_event, queue=queue)
    runner: web.AppRunner | None = None
    if serve_http:
        runner = web.AppRunner(make_aiohttp_app(receiver))
        await runner.setup()  # the app's startup starts the receiver (its consumers)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put(runner.addresses[0][1])
    else:
        await receiver.start()  # consumers only: no HTTP in this process
        ports.put(0)
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    if runner is not None:
        await runner.cleanup()  # closes the receiver
    else:
        await receiver.aclose()
    await record.hset(f"{PREFIX}:stats", str(os.getpid()), json.dumps(queue.stats.as_dict()))
    await record.aclose()


def worker(redis_url: str, serve_http: bool, ports: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ``stop``
    asyncio.run(run_worker(redis_url, serve_http, ports, stop))


# --- the fleet ----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    with redis_server(args.redis_url) as redis_url:
        admin = aioredis.Redis.from_url(redis_url)
        await admin.delete(*[k async for k in admin.scan_iter(f"{PREFIX}:*")] or ["-"])
        ctx = multiprocessing.get_context("spawn")
        ports, stop = ctx.Queue(), ctx.Event()
        roles = [True] * args.workers + [False]
        processes = [ctx.Process(target=worker, args=(redis_url, r, ports, stop)) for r in roles]
        for process in processes:
            process.start()
        try:
            urls = []
            for _ in processes:
                port = await asyncio.to_thread(ports.get, True, 60)
                if port:
                    urls.append(f"http://127.0.0.1:{port}/webhooks")
            async with FakeAPIMW(duplicate_deliveries=0.1, seed=7) as fake:
                credentials = Credentials(fake.credentials.api_key, fake.credentials.api_secret)
                async with Client(credentials, base_url=fake.base_url) as client:
                    for url in urls:
                        hook = await client.webhooks.register(
                            url, ["message.received"], secret=SECRET
                        )
                        # APIMW sends the verification challenge; the receiver answers it.
                        if not await fake.verify_webhook(hook.id):
                            print(f"{url} did not answer the challenge", file=sys.stderr)
                            return 1
                print(
                    f"{args.workers} web workers + 1 consumer-only process, Redis at {redis_url}; "
                    f"{args.messages} inbound messages, each delivered to all {len(urls)} webhooks"
                )
                for i in range(args.messages):
                    fake.simulate_inbound_message("+15550100", f"hello {i}")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while await admin.scard(f"{PREFIX}:handled") < args.messages:
                    if loop.time() > deadline:
                        break
                    await asyncio.sleep(0.05)
                deliveries = fake.stats.deliveries
        finally:
            stop.set()
            await asyncio.gather(*(asyncio.to_thread(p.join, 30) for p in processes))
        handled = await admin.scard(f"{PREFIX}:handled")
        by_role = {
            k.decode(): int(v) for k, v in (await admin.hgetall(f"{PREFIX}:by-role")).items()
        }
        stats = [json.loads(v) for v in (await admin.hgetall(f"{PREFIX}:stats")).values()]
        await admin.aclose()
    stored = sum(s["stored"] for s in stats)
    print(f"deliveries answered 200:     {deliveries}")
    print(f"events stored (once each):   {stored}")
    print(f"redeliveries not stored:     {sum(s['duplicates'] for s in stats)}")
    print(f"events handled:              {handled} of {args.messages}")
    print(f"handler calls by role:       {by_role}")
    if handled != args.messages or stored != args.messages or sum(by_role.values()) != stored:
        print("some events were not handled exactly once", file=sys.stderr)
        return 1
    if any(process.exitcode != 0 for process in processes):
        print("a worker failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--quick", action="store_true", help="2 web workers, 30 messages")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.workers, arguments.messages = 2, 30
    sys.exit(asyncio.run(main(arguments)))
