"""Workload 1, cold burst: N concurrent first requests on a client that holds no token.

Every request starts at once; the HTTP client has 100 connections, so requests queue in the
client rather than exhausting file descriptors. Measured: token-endpoint calls (server side),
errors seen by the application, and the time until the whole burst is answered.
"""

from __future__ import annotations

import asyncio
import time

from .common import Context, LoadMeter, Recorder, Run, delta, open_run

__all__ = ["run_cold_burst"]

NAME = "cold-burst"
TOKEN_LATENCY = 0.05
CONNECTIONS = 100


async def run_cold_burst(ctx: Context) -> list[Run]:
    sizes = (1_000,) if ctx.quick else (1_000, 10_000)
    runs: list[Run] = []
    for size in sizes:
        for rep in range(ctx.reps):
            for strategy_cls in ctx.strategies:
                async with open_run(
                    ctx,
                    strategy_cls,
                    server_options={
                        "token_latency": TOKEN_LATENCY,
                        "reuse_detection": True,
                        "seed": rep,
                    },
                    connections=CONNECTIONS,
                ) as (server, strategy):
                    recorder = Recorder()
                    before = server.stats()
                    meter = LoadMeter(server)
                    t0 = time.perf_counter()
                    await asyncio.gather(*(recorder.one(strategy) for _ in range(size)))
                    elapsed = time.perf_counter() - t0
                    load = meter.stop()
                    after = server.stats()
                metrics = {
                    "token_calls": delta(before, after, "token_calls", "refresh_calls"),
                    "elapsed_s": round(elapsed, 3),
                    **recorder.outcome_metrics(),
                    **load,
                }
                runs.append(Run(NAME, f"{size:,} concurrent", strategy_cls.name, rep, metrics))
                ctx.log(
                    f"{NAME} {size} rep {rep} {strategy_cls.name}: "
                    f"{metrics['token_calls']} token calls, {metrics['errors']} errors, "
                    f"{elapsed:.2f}s"
                )
    return runs
