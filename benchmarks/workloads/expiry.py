"""Workload 2, expiry crossing: 2-second tokens, 200 workers, 50 ms token-endpoint latency.

The server detects refresh-token reuse (a spent refresh token presented again revokes the
whole token family). After one warm-up request (the first token), 200 workers send requests
back to back for the duration; every token the strategy obtains expires during the run.
Measured: token and refresh calls per elapsed token lifetime and per token issued, refresh-token
reuses, 401s and errors seen by the application, requests that waited for a token call (the
probe), and the latency distribution (kept for the plot).
"""

from __future__ import annotations

from contextlib import aclosing
from functools import partial

from .common import Context, Recorder, Run, closed_loop, each_run, measure

__all__ = ["run_expiry"]

NAME = "expiry-crossing"
LIFETIME = 2.0
TOKEN_LATENCY = 0.05
WORKERS = 200
CONNECTIONS = 256


async def run_expiry(ctx: Context) -> list[Run]:
    duration = 2.5 if ctx.quick else 10.0
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
            strategy.probe.reset_waits()
            recorder = Recorder(keep_samples=True)
            m = await measure(
                slot, partial(closed_loop, strategy, recorder, WORKERS, duration=duration)
            )
            calls = m.delta("token_calls", "refresh_calls")
            issued = m.delta("token_successes", "refresh_successes")
            lifetimes = m.elapsed / LIFETIME
            metrics = {
                **recorder.outcome_metrics(),
                "rps": round(recorder.requests / m.elapsed, 1),
                "elapsed_s": round(m.elapsed, 3),
                "calls": calls,
                "token_calls": m.delta("token_calls"),
                "refresh_calls": m.delta("refresh_calls"),
                "tokens_issued": issued,
                "calls_per_lifetime": round(calls / lifetimes, 3),
                "calls_per_issued": round(calls / issued, 3) if issued else None,
                "refresh_reuse": m.delta("refresh_reuse"),
                "families_revoked": m.delta("families_revoked"),
                "server_401": m.delta("unauthorized"),
                **m.probe,
                **recorder.latency_metrics(),
                **m.load,
            }
            waits = m.counter_delta("stats_waits")
            if waits is not None:
                metrics["stats_waits"] = waits
            samples = (recorder.starts if recorder.starts is not None else [], recorder.latencies)
            runs.append(Run(NAME, "2-s tokens", slot.name, slot.rep, metrics, samples))
            ctx.log(
                f"{NAME} rep {slot.rep} {slot.name}: {recorder.requests} req, "
                f"{calls} token calls ({metrics['calls_per_lifetime']}/lifetime), "
                f"reuse {metrics['refresh_reuse']}, errors {metrics['errors']}, "
                f"waits(valid) {metrics['waits_valid']}, p99 {metrics['p99_ms']} ms"
            )
    return runs
