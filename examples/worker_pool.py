"""A pool of asyncio workers sending WhatsApp template messages through one shared client.

    python examples/worker_pool.py [--workers 10] [--messages 200] [--quick]

Without ``APIMW_API_KEY``/``APIMW_API_SECRET`` in the environment it starts a fake APIMW
server in this process and sends to made-up numbers. With them set (and ``APIMW_BASE_URL`` if
not production) it talks to the real API, and then only to the recipients you name::

    APIMW_API_KEY=ak_live_… APIMW_API_SECRET=sk_live_… \\
        python examples/worker_pool.py --to +15550001111 --to +15550002222 --messages 2

The pattern: a bounded :class:`asyncio.Queue` of jobs (the producer waits when the workers
fall behind), N worker tasks taking jobs from it, and **one** :class:`apimw_async.Client`
shared by all of them, so the whole pool uses one access token (one token request, however
many workers) and one connection pool. A failed job is recorded and the worker goes on: the
client has already retried what may safely be retried (429s, connections never established),
and never repeats a send that may have reached the server, so those are reported as
"outcome unknown" for you to check (``client.whatsapp.get_status``) instead of sending twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from apimw_async import (
    APIConnectionError,
    APIMWError,
    APITimeoutError,
    Client,
    ServerError,
    TemplateBody,
    TemplateCurrency,
)
from apimw_async.testing import FakeAPIMW

TEMPLATE = "order_confirmation"  # "Hi {{1}}, your order {{2}} has been confirmed. Total: {{3}}."
LANGUAGE = "en"


@dataclass(frozen=True)
class Job:
    to: str
    customer: str
    order: str
    total: str


@dataclass
class Results:
    sent: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    unknown: list[Job] = field(default_factory=list)
    per_worker: Counter[int] = field(default_factory=Counter)


async def worker(
    number: int, client: Client, queue: asyncio.Queue[Job | None], out: Results
) -> None:
    while True:
        job = await queue.get()
        try:
            if job is None:  # no more work
                return
            started = time.perf_counter()
            try:
                sent = await client.whatsapp.send_template(
                    job.to,
                    TEMPLATE,
                    LANGUAGE,
                    components=[
                        TemplateBody(job.customer, job.order, TemplateCurrency.of("USD", job.total))
                    ],
                )
            except (APITimeoutError, APIConnectionError, ServerError) as exc:
                # The request may have reached APIMW: do not send again blindly.
                out.unknown.append(job)
                out.failed[type(exc).__name__] += 1
            except APIMWError as exc:  # refused: bad number, template not approved, ...
                out.failed[type(exc).__name__] += 1
            else:
                out.sent.append(sent.message_id)
                out.latencies.append(time.perf_counter() - started)
                out.per_worker[number] += 1
        finally:
            queue.task_done()


async def produce(queue: asyncio.Queue[Job | None], jobs: Sequence[Job], workers: int) -> None:
    for job in jobs:
        await queue.put(job)  # waits while the queue is full: backpressure
    for _ in range(workers):
        await queue.put(None)


def make_jobs(recipients: Sequence[str] | None, count: int) -> list[Job]:
    jobs = []
    for i in range(count):
        to = recipients[i % len(recipients)] if recipients else f"+1555{i:07d}"
        jobs.append(Job(to, f"Customer {i}", f"A-{1000 + i}", f"{10 + i % 90}.99"))
    return jobs


@asynccontextmanager
async def make_client() -> AsyncIterator[tuple[Client, FakeAPIMW | None]]:
    """The real API if credentials are in the environment, else a fake server started here."""
    if os.environ.get("APIMW_API_KEY") and os.environ.get("APIMW_API_SECRET"):
        async with Client.from_env() as client:
            yield client, None
        return
    async with (
        FakeAPIMW(api_latency=0.005) as fake,
        Client(fake.credentials, base_url=fake.base_url) as client,
    ):
        yield client, fake


async def run(args: argparse.Namespace) -> int:
    async with make_client() as (client, fake):
        if fake is None and not args.to:
            print("real API: name the recipients with --to +E164NUMBER", file=sys.stderr)
            return 2
        where = "fake APIMW server at " + fake.base_url if fake else client.base_url
        print(f"sending {args.messages} x {TEMPLATE!r} with {args.workers} workers via {where}")

        jobs = make_jobs(args.to, args.messages)
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * args.workers)
        out = Results()
        started = time.perf_counter()
        await asyncio.gather(
            produce(queue, jobs, args.workers),
            *(worker(n, client, queue, out) for n in range(args.workers)),
        )
        elapsed = time.perf_counter() - started

        stats = client.tokens.stats
        print("summary")
        print(f"  messages sent        {len(out.sent)} of {len(jobs)}")
        failures = ", ".join(f"{name}: {n}" for name, n in out.failed.most_common())
        print(
            f"  failed               {sum(out.failed.values())}"
            + (f" ({failures})" if failures else "")
        )
        print(f"  outcome unknown      {len(out.unknown)}")
        print(f"  elapsed              {elapsed:.2f} s ({len(out.sent) / elapsed:.0f} messages/s)")
        if out.latencies:
            p50 = statistics.median(out.latencies) * 1000
            p95 = sorted(out.latencies)[int(0.95 * (len(out.latencies) - 1))] * 1000
            print(f"  latency p50 / p95    {p50:.1f} / {p95:.1f} ms")
        print(
            f"  busiest / idlest     {max(out.per_worker.values(), default=0)} / "
            f"{min((out.per_worker[n] for n in range(args.workers)), default=0)} sends per worker"
        )
        print(f"  token requests       {stats.token_calls} (shared by all {args.workers} workers)")
        if fake is not None:
            print(f"  server saw           {fake.stats.messages_sent} template messages")
        return 0 if len(out.sent) == len(jobs) else 1


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=positive, default=10)
    parser.add_argument("--messages", type=positive, default=200)
    parser.add_argument("--to", action="append", metavar="E164", help="recipient (repeatable)")
    parser.add_argument("--quick", action="store_true", help="4 workers, 20 messages")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.messages = 4, 20
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
