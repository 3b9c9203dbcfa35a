"""Workload 7, oversubscription: more concurrent workers than connections.

A pool of 20 connections and 2×, 5× and 10× as many closed-loop workers, once with a
long-lived token (steady) and once with 2-second tokens (a rollover every ~1.6 s, 50 ms token
latency, reuse detection on). aiohttp's pool is not fair: a connection released while requests
wait may go to a later request, so without admission a few requests wait for as long as the
load lasts. Rows: ``static`` (plain aiohttp, no admission), ``static+fifo`` (the same behind a
FIFO admission queue: the fair baseline every ratio here is taken against), the Client (fair
admission on by default), the middleware with ``fair_admission=True``, and the manager on the
application's own session (its token calls share the pool). Measured: the latency
distribution (p50, p99, p99.9, max), throughput, errors, and the callers that waited for a
token while a valid one was held (the probe) or with none held.

The pool is smaller than the issue's 100 so that 10× stays at 200 workers on a 2-core machine
shared with other work; the starvation it shows does not depend on the pool's size.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from functools import partial
from typing import Any

from .common import Context, Recorder, Run, Slot, closed_loop, each_run, measure

__all__ = ["FACTORS", "POOL", "run_oversubscription"]

NAME = "oversubscription"
POOL = 20
FACTORS = (2, 5, 10)
LIFETIME = 2.0
TOKEN_LATENCY = 0.05


def _modes(quick: bool) -> list[tuple[str, dict[str, Any], float]]:
    """(variant suffix, server options, duration in seconds)."""
    return [
        ("steady token", {"token_lifetime": 3600.0}, 1.0 if quick else 3.0),
        (
            "2-s tokens",
            {
                "token_lifetime": LIFETIME,
                "token_latency": TOKEN_LATENCY,
                "reuse_detection": True,
            },
            2.5 if quick else 6.0,
        ),
    ]


async def run_oversubscription(ctx: Context) -> list[Run]:
    runs: list[Run] = []
    for factor in ctx.factors or FACTORS:
        workers = factor * POOL
        for mode, options, duration in _modes(ctx.quick):
            variant = f"{factor}× pool ({workers} workers, {POOL} connections), {mode}"
            async with aclosing(
                each_run(
                    ctx,
                    server_options=_seeded(options),
                    connections=POOL,
                    instrument=True,
                )
            ) as slots:
                async for slot in slots:
                    runs.append(await _one(ctx, slot, variant, workers, duration))
    return runs


def _seeded(options: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    return lambda rep: {**options, "seed": rep}


async def _one(ctx: Context, slot: Slot, variant: str, workers: int, duration: float) -> Run:
    strategy = slot.strategy
    await Recorder().one(strategy)  # the first token
    await closed_loop(strategy, Recorder(), workers, count=2 * workers)  # pool filled
    strategy.probe.reset_waits()
    recorder = Recorder()
    m = await measure(slot, partial(closed_loop, strategy, recorder, workers, duration=duration))
    metrics: dict[str, Any] = {
        **recorder.outcome_metrics(),
        "rps": round(recorder.requests / m.elapsed, 1),
        "elapsed_s": round(m.elapsed, 3),
        "token_calls": m.delta("token_calls", "refresh_calls"),
        **m.probe,
        **recorder.latency_metrics(),
        **m.load,
    }
    for counter in ("stats_waits", "stats_waits_first", "stats_waits_valid"):
        value = m.counter_delta(counter)
        if value is not None:
            metrics[counter] = value
    ctx.log(
        f"{NAME} {variant} rep {slot.rep} {slot.name}: {metrics['rps']} req/s, "
        f"p50 {metrics['p50_ms']} p99.9 {metrics['p999_ms']} max {metrics['max_ms']} ms, "
        f"errors {metrics['errors']}, waits(valid) {metrics['waits_valid']}"
    )
    return Run(NAME, variant, slot.name, slot.rep, metrics)
