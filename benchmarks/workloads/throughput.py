"""Workload 3, steady throughput: a long-lived token, 50 workers, 20,000 requests.

After a warm-up of 500 requests (first token, connection pool filled), 50 workers send 20,000
requests back to back. Measured: requests per second, the client's CPU time per request (the
cost of the strategy itself, independent of how fast the server is) and the server's CPU use.
"""

from __future__ import annotations

import math
import time

from .common import Context, LoadMeter, Recorder, Run, closed_loop, open_run

__all__ = ["run_throughput"]

NAME = "steady-throughput"
WORKERS = 50
CONNECTIONS = 100
WARMUP = 500


async def run_throughput(ctx: Context) -> list[Run]:
    total = 2_000 if ctx.quick else 20_000
    runs: list[Run] = []
    for rep in range(ctx.reps):
        for strategy_cls in ctx.strategies:
            async with open_run(
                ctx,
                strategy_cls,
                server_options={"token_lifetime": 3600.0, "seed": rep},
                connections=CONNECTIONS,
            ) as (server, strategy):
                await closed_loop(strategy, Recorder(), WORKERS, count=WARMUP)
                before = server.stats()
                meter = LoadMeter(server)
                cpu0 = time.process_time()
                recorder = Recorder()
                elapsed = await closed_loop(strategy, recorder, WORKERS, count=total)
                cpu = time.process_time() - cpu0
                load = meter.stop()
                after = server.stats()
            server_cpu = float(after["cpu_s"]) - float(before["cpu_s"])
            metrics = {
                **recorder.outcome_metrics(),
                "rps": round(recorder.requests / elapsed, 1),
                "elapsed_s": round(elapsed, 3),
                "client_cpu_us": round(cpu / recorder.requests * 1e6, 1),
                "client_cpu_share": round(cpu / elapsed, 3),
                "server_cpu_share": None
                if math.isnan(server_cpu)
                else round(server_cpu / elapsed, 3),
                **recorder.latency_metrics(),
                **load,
            }
            runs.append(Run(NAME, f"{total:,} requests", strategy_cls.name, rep, metrics))
            ctx.log(
                f"{NAME} rep {rep} {strategy_cls.name}: {metrics['rps']} req/s, "
                f"client {metrics['client_cpu_us']} us/req, server cpu "
                f"{metrics['server_cpu_share']}, errors {metrics['errors']}"
            )
    return runs
