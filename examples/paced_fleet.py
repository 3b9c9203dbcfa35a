"""A pool of worker processes sending as fast as they can, paced together through Redis.

    python examples/paced_fleet.py [--processes 8] [--per-window 20] [--window 2] [--quick]

Starts everything it needs: a fake APIMW server in this process, a throw-away
``redis-server`` on a free port (or uses ``--redis-url``), and worker processes, each with its
own :class:`apimw_async.Client` and several tasks sending messages in a loop. Every worker
builds the same ``RedisRateLimiter``, so the pool together sends at most ``--per-window``
messages in any ``--window`` seconds; halfway through, the server answers one send with a 429,
and every worker waits until the window it names has passed. At the end it prints what the
server saw: the busiest window against the limit, and what arrived during the cool-down.

In production a worker does just this::

    limiter = RedisRateLimiter.from_url(os.environ["REDIS_URL"], per_minute=300)
    async with Client.from_env(rate_limiter=limiter) as client:
        ...
    await limiter.aclose()

Needs ``pip install 'apimw-async[redis]'`` and ``redis-server`` on PATH (Debian:
``apt-get install redis-server``) unless ``--redis-url`` points at a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from typing import Any

from fleet_workers import redis_server  # the throw-away redis-server of the other example

from apimw_async import Client, Credentials, RateLimitError
from apimw_async.stores.redis import RedisRateLimiter
from apimw_async.testing import FakeAPIMW

# --- one worker process -----------------------------------------------------------------------


async def work(config: dict[str, Any]) -> dict[str, Any]:
    limiter = RedisRateLimiter.from_url(
        config["redis_url"],
        limits=[(config["per_window"], config["window"])],
        prefix="apimw-ex",
        socket_timeout=5,  # (default 1 s) a loaded laptop running 8 processes is not an outage
    )
    credentials = Credentials(config["api_key"], config["api_secret"])
    sent = errors = 0
    async with (
        limiter,
        Client(credentials, base_url=config["base_url"], rate_limiter=limiter) as client,
    ):
        end = time.monotonic() + config["seconds"]

        async def task(index: int) -> None:
            nonlocal sent, errors
            while time.monotonic() < end:
                try:
                    await client.whatsapp.send_text("+15550001111", f"hello {index}")
                    sent += 1
                except RateLimitError:
                    pass  # the 429 the example injects (its retry may come too late)
                except Exception as exc:
                    errors += 1
                    print(f"  worker error: {type(exc).__name__}: {exc}", file=sys.stderr)

        await asyncio.gather(*(task(i) for i in range(config["tasks"])))
    return {"sent": sent, "errors": errors, "pause": limiter.stats.last_pause}


def worker(config: dict[str, Any], results: Any) -> None:
    results.put(asyncio.run(work(config)))


# --- the pool ---------------------------------------------------------------------------------


def busiest_window(times: list[float], window: float) -> int:
    """The most sends in any ``window`` seconds."""
    times = sorted(times)
    best = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def main(args: argparse.Namespace) -> None:
    with redis_server(args.redis_url) as redis_url:
        async with FakeAPIMW() as fake:
            config = {
                "base_url": fake.base_url,
                "api_key": fake.credentials.api_key,
                "api_secret": fake.credentials.api_secret,
                "redis_url": redis_url,
                "tasks": args.tasks,
                "seconds": args.seconds,
                "per_window": args.per_window,
                "window": args.window,
            }
            print(
                f"{args.processes} processes x {args.tasks} tasks for {args.seconds:g}s, at most "
                f"{args.per_window} sends in any {args.window:g}s, Redis at {redis_url}"
            )
            ctx = multiprocessing.get_context("spawn")
            results = ctx.Queue()
            processes = [
                ctx.Process(target=worker, args=(config, results)) for _ in range(args.processes)
            ]
            for process in processes:
                process.start()
            # The fake server lives in this event loop: wait without blocking it.
            joined = asyncio.gather(*(asyncio.to_thread(process.join) for process in processes))
            # Halfway through the sends it expects, one 429 (polls the fake's counter).
            half = args.per_window * args.seconds / args.window / 2
            while fake.stats.messages_sent < half and not joined.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            fake.faults.add("send", status=429, retry_after=max(1, round(args.window)))
            await joined
            reports = [results.get(timeout=5) for p in processes if p.exitcode == 0]

            sent_at = [message.sent_at for message in fake.messages.values()]
            busiest = busiest_window(sent_at, args.window)
            print(f"messages the server accepted   {len(sent_at)}")
            window = f"busiest {args.window:g}-s window"
            print(f"{window:<30} {busiest} of {args.per_window} allowed")
            pauses = [r["pause"] for r in reports if r["pause"]]
            if pauses:
                set_at, until, _ = pauses[0]
                during = sum(1 for at in sent_at if set_at <= at < until)
                print(
                    f"one 429: every process paused {until - set_at:.1f}s; sends arriving then "
                    f"{during} (already on their way)"
                )
            print(f"errors seen by the workers     {sum(r['errors'] for r in reports)}")
            if any(process.exitcode != 0 for process in processes):
                sys.exit("a worker failed")
            if busiest > args.per_window or sum(r["errors"] for r in reports):
                sys.exit("the pool was not paced")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--per-window", type=int, default=20)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--quick", action="store_true", help="3 processes, 10 per second, 3 s")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.processes, arguments.seconds = 3, 3.0
        arguments.per_window, arguments.window = 10, 1.0
    asyncio.run(main(arguments))
