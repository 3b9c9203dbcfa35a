"""Workload 1, cold burst: N concurrent first requests on a client that holds no token.

Every request starts at once; the HTTP client has 100 connections, so requests queue in the
client rather than exhausting file descriptors. Measured: token-endpoint calls (server side),
errors seen by the application, and the time until the whole burst is answered.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from functools import partial

from ..strategies import Strategy
from .common import Context, Recorder, Run, each_run, measure

__all__ = ["run_cold_burst"]

NAME = "cold-burst"
TOKEN_LATENCY = 0.05
CONNECTIONS = 100


async def _burst(strategy: Strategy, recorder: Recorder, size: int) -> None:
    await asyncio.gather(*(recorder.one(strategy) for _ in range(size)))


async def run_cold_burst(ctx: Context) -> list[Run]:
    sizes = (1_000,) if ctx.quick else (1_000, 10_000)
    runs: list[Run] = []
    options = {"token_latency": TOKEN_LATENCY, "reuse_detection": True}
    for size in sizes:
        async with aclosing(
            each_run(
                ctx, server_options=lambda rep: {**options, "seed": rep}, connections=CONNECTIONS
            )
        ) as slots:
            async for slot in slots:
                strategy = slot.strategy
                recorder = Recorder()

                m = await measure(slot, partial(_burst, strategy, recorder, size))
                metrics = {
                    "token_calls": m.delta("token_calls", "refresh_calls"),
                    "elapsed_s": round(m.elapsed, 3),
                    **recorder.outcome_metrics(),
                    **m.load,
                }
                runs.append(Run(NAME, f"{size:,} concurrent", slot.name, slot.rep, metrics))
                ctx.log(
                    f"{NAME} {size} rep {slot.rep} {slot.name}: "
                    f"{metrics['token_calls']} token calls, {metrics['errors']} errors, "
                    f"{m.elapsed:.2f}s"
                )
    return runs
