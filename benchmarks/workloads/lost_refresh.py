"""Workload 6 (from the design notes' anchors), lost refresh answer.

The server rotates the refresh token but the answer is lost (one ``auth/refresh`` answers 500
*after* committing), with reuse detection on: a client that sends the spent refresh token again
gets ``INVALID_REFRESH_TOKEN`` and the family is revoked. 2-second tokens, 50 workers. Measured:
errors seen by the application, refresh-token reuses, and whether the strategy recovered
(requests succeed again in the last second of the run).
"""

from __future__ import annotations

from contextlib import aclosing
from functools import partial

from .common import Context, Recorder, Run, closed_loop, each_run, measure

__all__ = ["run_lost_refresh"]

NAME = "lost-refresh"
LIFETIME = 2.0
TOKEN_LATENCY = 0.05
WORKERS = 50
CONNECTIONS = 100


async def run_lost_refresh(ctx: Context) -> list[Run]:
    duration = 3.0 if ctx.quick else 4.0
    runs: list[Run] = []
    options = {"token_lifetime": LIFETIME, "token_latency": TOKEN_LATENCY, "reuse_detection": True}
    async with aclosing(
        each_run(
            ctx,
            server_options=lambda rep: {**options, "seed": rep},
            connections=CONNECTIONS,
            instrument=True,
        )
    ) as slots:
        async for slot in slots:
            strategy = slot.strategy
            await Recorder().one(strategy)  # warm-up: the first token
            slot.server.add_fault("refresh", "status", status=500, after=True)
            recorder = Recorder(keep_samples=True)
            m = await measure(
                slot, partial(closed_loop, strategy, recorder, WORKERS, duration=duration)
            )
            elapsed = m.elapsed
            starts = recorder.starts if recorder.starts is not None else []
            tail = [i for i, start in enumerate(starts) if start >= elapsed - 1.0]
            last_error = recorder.last_error_at - recorder.origin
            recovered = bool(tail) and last_error < elapsed - 1.0
            metrics = {
                **recorder.outcome_metrics(),
                "recovered": recovered,
                "last_error_s": round(last_error, 3) if recorder.error_count else None,
                "token_calls": m.delta("token_calls"),
                "refresh_calls": m.delta("refresh_calls"),
                "refresh_reuse": m.delta("refresh_reuse"),
                "families_revoked": m.delta("families_revoked"),
                **recorder.latency_metrics(),
                **m.load,
            }
            runs.append(Run(NAME, "one refresh answer lost", slot.name, slot.rep, metrics))
            ctx.log(
                f"{NAME} rep {slot.rep} {slot.name}: errors {metrics['errors']} "
                f"{metrics['error_kinds']}, reuse {metrics['refresh_reuse']}, "
                f"recovered {recovered}"
            )
    return runs
