"""Workload 6 (from the design notes' anchors), lost refresh answer.

The server rotates the refresh token but the answer is lost (one ``auth/refresh`` answers 500
*after* committing), with reuse detection on: a client that sends the spent refresh token again
gets ``INVALID_REFRESH_TOKEN`` and the family is revoked. 2-second tokens, 50 workers. Measured:
errors seen by the application, refresh-token reuses, and whether the strategy recovered
(requests succeed again in the last second of the run).
"""

from __future__ import annotations

import time

from .common import Context, LoadMeter, Recorder, Run, closed_loop, delta, open_run

__all__ = ["run_lost_refresh"]

NAME = "lost-refresh"
LIFETIME = 2.0
TOKEN_LATENCY = 0.05
WORKERS = 50
CONNECTIONS = 100


async def run_lost_refresh(ctx: Context) -> list[Run]:
    duration = 3.0 if ctx.quick else 4.0
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
                    "seed": rep,
                },
                connections=CONNECTIONS,
                instrument=True,
            ) as (server, strategy):
                await Recorder().one(strategy)  # warm-up: the first token
                server.add_fault("refresh", "status", status=500, after=True)
                before = server.stats()
                meter = LoadMeter(server)
                t0 = time.perf_counter()
                recorder = Recorder(keep_samples=True, origin=t0)
                elapsed = await closed_loop(strategy, recorder, WORKERS, until=t0 + duration)
                load = meter.stop()
                after = server.stats()
            starts = recorder.starts if recorder.starts is not None else []
            tail = [i for i, start in enumerate(starts) if start >= elapsed - 1.0]
            last_error = recorder.last_error_at - t0
            recovered = bool(tail) and last_error < elapsed - 1.0
            metrics = {
                **recorder.outcome_metrics(),
                "recovered": recovered,
                "last_error_s": round(last_error, 3) if recorder.error_count else None,
                "token_calls": delta(before, after, "token_calls"),
                "refresh_calls": delta(before, after, "refresh_calls"),
                "refresh_reuse": delta(before, after, "refresh_reuse"),
                "families_revoked": delta(before, after, "families_revoked"),
                **recorder.latency_metrics(),
                **load,
            }
            runs.append(Run(NAME, "one refresh answer lost", strategy_cls.name, rep, metrics))
            ctx.log(
                f"{NAME} rep {rep} {strategy_cls.name}: errors {metrics['errors']} "
                f"{metrics['error_kinds']}, reuse {metrics['refresh_reuse']}, "
                f"recovered {recovered}"
            )
    return runs
