"""Workload 4, faults: 20% of token calls answer 500 and 10% answer 429 with retry_after.

Same shape as the expiry crossing (2-second tokens, 200 workers, 50 ms token latency, reuse
detection on), with the faults switched on after the warm-up request, on both ``auth/token``
and ``auth/refresh`` (``error.retry_after`` = 1 s in the 429 body, as the docs show; no
``Retry-After`` header). The fault sequence is seeded per repetition. Measured: errors and 401s
seen by the application, token calls, and the stalls (longest wait for a token, max latency).
"""

from __future__ import annotations

import time

from .common import Context, LoadMeter, Recorder, Run, closed_loop, delta, open_run

__all__ = ["run_faults"]

NAME = "faults"
LIFETIME = 2.0
TOKEN_LATENCY = 0.05
WORKERS = 200
CONNECTIONS = 256
RATES = {"error_500": 0.2, "error_429": 0.1, "retry_after": 1}


async def run_faults(ctx: Context) -> list[Run]:
    duration = 2.5 if ctx.quick else 7.0
    runs: list[Run] = []
    for rep in range(ctx.reps):
        for strategy_cls in ctx.strategies:
            async with open_run(
                ctx,
                strategy_cls,
                server_options={
                    "token_lifetime": LIFETIME,
                    "token_latency": TOKEN_LATENCY,
                    "reuse_detection": True,
                    "seed": 1000 + rep,
                },
                connections=CONNECTIONS,
                instrument=True,
            ) as (server, strategy):
                await Recorder().one(strategy)  # warm-up: the first token, before any fault
                for endpoint in ("token", "refresh"):
                    server.set_rate(endpoint, **RATES)
                strategy.probe.reset_waits()
                before = server.stats()
                meter = LoadMeter(server)
                t0 = time.perf_counter()
                recorder = Recorder()
                elapsed = await closed_loop(strategy, recorder, WORKERS, until=t0 + duration)
                load = meter.stop()
                after = server.stats()
                probe = strategy.probe.as_dict()
            metrics = {
                **recorder.outcome_metrics(),
                "elapsed_s": round(elapsed, 3),
                "token_calls": delta(before, after, "token_calls", "refresh_calls"),
                "faults_injected": delta(before, after, "faults_injected"),
                "refresh_reuse": delta(before, after, "refresh_reuse"),
                **probe,
                **recorder.latency_metrics(),
                **load,
            }
            runs.append(Run(NAME, "20% 500 + 10% 429", strategy_cls.name, rep, metrics))
            ctx.log(
                f"{NAME} rep {rep} {strategy_cls.name}: {recorder.requests} req, "
                f"errors {metrics['errors']} {metrics['error_kinds']}, "
                f"token calls {metrics['token_calls']} ({metrics['faults_injected']} faulted), "
                f"max {metrics['max_ms']} ms"
            )
    return runs
