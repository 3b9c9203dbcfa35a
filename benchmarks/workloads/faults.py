"""Workload 4, faults: 20% of token calls answer 500 and 10% answer 429 with retry_after.

Same shape as the expiry crossing (2-second tokens, 200 workers, 50 ms token latency, reuse
detection on), with the faults switched on after the warm-up request, on both ``auth/token``
and ``auth/refresh`` (``error.retry_after`` = 1 s in the 429 body, as the docs show; no
``Retry-After`` header). The fault sequence is seeded per repetition. Measured: errors and 401s
seen by the application, token calls, and the stalls (longest wait for a token, max latency).
"""

from __future__ import annotations

from contextlib import aclosing
from functools import partial

from .common import Context, Recorder, Run, closed_loop, each_run, measure

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
    options = {"token_lifetime": LIFETIME, "token_latency": TOKEN_LATENCY, "reuse_detection": True}
    async with aclosing(
        each_run(
            ctx,
            server_options=lambda rep: {**options, "seed": 1000 + rep},
            connections=CONNECTIONS,
            instrument=True,
        )
    ) as slots:
        async for slot in slots:
            strategy = slot.strategy
            await Recorder().one(strategy)  # warm-up: the first token, before any fault
            for endpoint in ("token", "refresh"):
                slot.server.set_rate(endpoint, **RATES)
            strategy.probe.reset_waits()
            recorder = Recorder()
            m = await measure(
                slot, partial(closed_loop, strategy, recorder, WORKERS, duration=duration)
            )
            metrics = {
                **recorder.outcome_metrics(),
                "elapsed_s": round(m.elapsed, 3),
                "token_calls": m.delta("token_calls", "refresh_calls"),
                "faults_injected": m.delta("faults_injected"),
                "refresh_reuse": m.delta("refresh_reuse"),
                **m.probe,
                **recorder.latency_metrics(),
                **m.load,
            }
            runs.append(Run(NAME, "20% 500 + 10% 429", slot.name, slot.rep, metrics))
            ctx.log(
                f"{NAME} rep {slot.rep} {slot.name}: {recorder.requests} req, "
                f"errors {metrics['errors']} {metrics['error_kinds']}, "
                f"token calls {metrics['token_calls']} ({metrics['faults_injected']} faulted), "
                f"max {metrics['max_ms']} ms"
            )
    return runs
