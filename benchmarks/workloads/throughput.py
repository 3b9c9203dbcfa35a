"""Workload 3, steady throughput: a long-lived token, 50 workers, 20,000 requests.

After a warm-up of 500 requests (first token, connection pool filled), 50 workers send 20,000
requests back to back. Measured: requests per second, the client's CPU time per request (the
cost of the strategy itself, independent of how fast the server is) and the server's CPU use.
"""

from __future__ import annotations

import math
import time
from contextlib import aclosing
from functools import partial

from .common import Context, Recorder, Run, closed_loop, each_run, measure

__all__ = ["run_throughput"]

NAME = "steady-throughput"
WORKERS = 50
CONNECTIONS = 100
WARMUP = 500


async def run_throughput(ctx: Context) -> list[Run]:
    total = 2_000 if ctx.quick else 20_000
    runs: list[Run] = []
    async with aclosing(
        each_run(
            ctx,
            server_options=lambda rep: {"token_lifetime": 3600.0, "seed": rep},
            connections=CONNECTIONS,
        )
    ) as slots:
        async for slot in slots:
            strategy = slot.strategy
            await closed_loop(strategy, Recorder(), WORKERS, count=WARMUP)
            recorder = Recorder()
            cpu0 = time.process_time()
            m = await measure(slot, partial(closed_loop, strategy, recorder, WORKERS, count=total))
            cpu = time.process_time() - cpu0
            server_cpu = float(m.after["cpu_s"]) - float(m.before["cpu_s"])
            metrics = {
                **recorder.outcome_metrics(),
                "rps": round(recorder.requests / m.elapsed, 1),
                "elapsed_s": round(m.elapsed, 3),
                "client_cpu_us": round(cpu / recorder.requests * 1e6, 1),
                "client_cpu_share": round(cpu / m.elapsed, 3),
                "server_cpu_share": None
                if math.isnan(server_cpu)
                else round(server_cpu / m.elapsed, 3),
                **recorder.latency_metrics(),
                **m.load,
            }
            runs.append(Run(NAME, f"{total:,} requests", slot.name, slot.rep, metrics))
            ctx.log(
                f"{NAME} rep {slot.rep} {slot.name}: {metrics['rps']} req/s, "
                f"client {metrics['client_cpu_us']} us/req, server cpu "
                f"{metrics['server_cpu_share']}, errors {metrics['errors']}"
            )
    return runs
