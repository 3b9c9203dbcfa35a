"""Workload 2, expiry crossing: 2-second tokens, 200 workers, 50 ms token-endpoint latency.

The server detects refresh-token reuse (a spent refresh token presented again revokes the
whole token family). After one warm-up request (the first token), 200 workers send requests
back to back for the duration; every token the strategy obtains expires during the run.
Measured: token and refresh calls per elapsed token lifetime and per token issued, refresh-token
reuses, 401s and errors seen by the application, requests that waited for a token call (the
probe), and the latency distribution (kept for the plot).
"""

from __future__ import annotations

import time

from .common import Context, LoadMeter, Recorder, Run, closed_loop, delta, open_run

__all__ = ["run_expiry"]

NAME = "expiry-crossing"
LIFETIME = 2.0
TOKEN_LATENCY = 0.05
WORKERS = 200
CONNECTIONS = 256


async def run_expiry(ctx: Context) -> list[Run]:
    duration = 2.5 if ctx.quick else 10.0
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
                strategy.probe.reset_waits()
                counters_before = strategy.counters()
                before = server.stats()
                meter = LoadMeter(server)
                t0 = time.perf_counter()
                recorder = Recorder(keep_samples=True, origin=t0)
                elapsed = await closed_loop(strategy, recorder, WORKERS, until=t0 + duration)
                load = meter.stop()
                after = server.stats()
                counters_after = strategy.counters()
                probe = strategy.probe.as_dict()
            calls = delta(before, after, "token_calls", "refresh_calls")
            issued = delta(before, after, "token_successes", "refresh_successes")
            lifetimes = elapsed / LIFETIME
            metrics = {
                **recorder.outcome_metrics(),
                "rps": round(recorder.requests / elapsed, 1),
                "elapsed_s": round(elapsed, 3),
                "calls": calls,
                "token_calls": delta(before, after, "token_calls"),
                "refresh_calls": delta(before, after, "refresh_calls"),
                "tokens_issued": issued,
                "calls_per_lifetime": round(calls / lifetimes, 3),
                "calls_per_issued": round(calls / issued, 3) if issued else None,
                "refresh_reuse": delta(before, after, "refresh_reuse"),
                "families_revoked": delta(before, after, "families_revoked"),
                "server_401": delta(before, after, "unauthorized"),
                **probe,
                **recorder.latency_metrics(),
                **load,
            }
            if "stats_waits" in counters_after:
                metrics["stats_waits"] = counters_after["stats_waits"] - counters_before.get(
                    "stats_waits", 0
                )
            samples = (recorder.starts if recorder.starts is not None else [], recorder.latencies)
            runs.append(Run(NAME, "2-s tokens", strategy_cls.name, rep, metrics, samples))
            ctx.log(
                f"{NAME} rep {rep} {strategy_cls.name}: {recorder.requests} req, "
                f"{calls} token calls ({metrics['calls_per_lifetime']}/lifetime), "
                f"reuse {metrics['refresh_reuse']}, errors {metrics['errors']}, "
                f"waits(valid) {metrics['waits_valid']}, p99 {metrics['p99_ms']} ms"
            )
    return runs
