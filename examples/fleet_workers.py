"""A pool of worker processes sharing one APIMW token through Redis.

    python examples/fleet_workers.py [--processes 6] [--tasks 100] [--seconds 10] [--quick]

Starts everything it needs: a fake APIMW server in this process (short-lived tokens, reuse
detection on), a throw-away ``redis-server`` on a free port (or uses ``--redis-url``), and
worker processes, each with its own :class:`apimw_async.Client` and many tasks calling the
API. Every worker builds the same ``RedisTokenStore``; the token managers then share one token
pair: one process refreshes (under a Redis lease), the others adopt the new pair from Redis.
At the end it prints what the server saw: about one token call per token lifetime for the
whole pool, and no refresh token used twice.

In production a worker does just this::

    store = RedisTokenStore.from_url(os.environ["REDIS_URL"], encryption_key=...)
    async with Client.from_env(store=store) as client:
        ...
    await store.aclose()

Needs ``pip install 'apimw-async[redis]'`` and ``redis-server`` on PATH (Debian:
``apt-get install redis-server``) unless ``--redis-url`` points at a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from apimw_async import Client, Credentials
from apimw_async.stores.redis import RedisTokenStore
from apimw_async.testing import FakeAPIMW

# --- one worker process -----------------------------------------------------------------------


async def work(config: dict[str, Any]) -> dict[str, Any]:
    store = RedisTokenStore.from_url(config["redis_url"], prefix="apimw-example")
    credentials = Credentials(config["api_key"], config["api_secret"])
    requests = errors = 0
    async with store, Client(credentials, base_url=config["base_url"], store=store) as client:
        end = time.monotonic() + config["seconds"]

        async def task() -> None:
            nonlocal requests, errors
            while time.monotonic() < end:
                try:
                    await client.auth.me()  # any API call: the token is handled for you
                    requests += 1
                except Exception as exc:
                    errors += 1
                    print(f"  worker error: {type(exc).__name__}: {exc}", file=sys.stderr)
                await asyncio.sleep(random.uniform(0.2, 0.6))

        await asyncio.gather(*(task() for _ in range(config["tasks"])))
        stats = client.tokens.stats
        return {
            "requests": requests,
            "errors": errors,
            "token_calls": stats.token_calls,
            "refresh_calls": stats.refresh_calls,
            "adopted": stats.adopted,
        }


def worker(config: dict[str, Any], results: Any) -> None:
    results.put(asyncio.run(work(config)))


# --- the pool ---------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """``url`` as it is, or a throw-away redis-server on a free loopback port."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH: apt-get install redis-server, or use --redis-url")
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
                time.sleep(0.1)
            else:
                sys.exit("redis-server did not start")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


async def main(args: argparse.Namespace) -> None:
    with redis_server(args.redis_url) as redis_url:
        async with FakeAPIMW(token_lifetime=args.token_lifetime, reuse_detection=True) as fake:
            config = {
                "base_url": fake.base_url,
                "api_key": fake.credentials.api_key,
                "api_secret": fake.credentials.api_secret,
                "redis_url": redis_url,
                "tasks": args.tasks,
                "seconds": args.seconds,
            }
            print(
                f"{args.processes} processes x {args.tasks} tasks for {args.seconds:g}s, "
                f"{args.token_lifetime:g}-s tokens, Redis at {redis_url}, APIMW at {fake.base_url}"
            )
            ctx = multiprocessing.get_context("spawn")
            results = ctx.Queue()
            processes = [
                ctx.Process(target=worker, args=(config, results)) for _ in range(args.processes)
            ]
            for process in processes:
                process.start()
            # The fake server lives in this event loop: wait without blocking it.
            await asyncio.gather(*(asyncio.to_thread(process.join) for process in processes))
            reports = [results.get(timeout=5) for p in processes if p.exitcode == 0]

            stats = fake.stats
            lifetimes = args.seconds / args.token_lifetime
            print(f"API requests served:        {sum(r['requests'] for r in reports)}")
            print(f"errors seen by the workers: {sum(r['errors'] for r in reports)}")
            print(
                f"token endpoint calls:       {stats.token_calls} token + "
                f"{stats.refresh_calls} refresh over ~{lifetimes:.0f} token lifetimes"
            )
            print(f"tokens adopted from Redis:  {sum(r['adopted'] for r in reports)}")
            print(f"refresh tokens reused:      {stats.refresh_reuse}")
            if any(process.exitcode != 0 for process in processes):
                sys.exit("a worker failed")
            if sum(r["errors"] for r in reports) or stats.refresh_reuse or stats.invalid_refresh:
                sys.exit("the pool did not share its token cleanly")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--token-lifetime", type=float, default=3.0)
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--quick", action="store_true", help="3 processes x 20 tasks for 4 s")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.processes, arguments.tasks = 3, 20
        arguments.seconds, arguments.token_lifetime = 4.0, 1.5
    asyncio.run(main(arguments))
