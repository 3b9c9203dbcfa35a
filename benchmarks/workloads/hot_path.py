"""Workload 5, hot path: the per-request token work without HTTP, and its memory over 1M calls.

With a fresh token cached (one warm-up request first), each strategy's token path (acquire the
token, build the ``Authorization`` header: see ``Strategy.token_path``) is awaited in a tight
loop and compared with awaiting a trivial coroutine (``async def f(): return None``); both
costs include the loop and the ``await``. Iterations are calibrated to about 0.05 s per timed
repeat; of 5 repeats (interleaved with the trivial await) the fastest is kept. For
``apimw_async`` the bare ``get_token()`` is timed too: that is the number the target (≤ 2× a
trivial await) is about. Memory: after a warm-up, the token path runs 1,000,000 times (no HTTP:
"requests" here are token-path calls) and the growth of traced Python memory (tracemalloc) and
of the process RSS is reported.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from ..strategies import ClientStrategy, MiddlewareStrategy
from .common import Context, Recorder, Run, each_run

__all__ = ["run_hot_path"]

NAME = "hot-path"


async def _trivial() -> None:
    return None


async def _time_per_call(fn: Callable[[], Awaitable[Any]], n: int, repeats: int) -> list[float]:
    """Nanoseconds per ``await fn()``, once per repeat."""
    results = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        results.append((time.perf_counter_ns() - t0) / n)
    return results


async def _calibrate(fn: Callable[[], Awaitable[Any]], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds`` (at least 2,000)."""
    probe = 2_000
    per_call_ns = min(await _time_per_call(fn, probe, 3))
    return max(probe, int(seconds * 1e9 / per_call_ns))


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() // 1024


async def _memory(fn: Callable[[], Awaitable[Any]], calls: int) -> dict[str, Any]:
    for _ in range(10_000):
        await fn()
    gc.collect()
    rss0 = _rss_kib()
    tracemalloc.start()
    try:
        traced0, _ = tracemalloc.get_traced_memory()
        for _ in range(calls):
            await fn()
        gc.collect()
        traced1, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss1 = _rss_kib()
    return {
        "calls": calls,
        "traced_growth_kib": round((traced1 - traced0) / 1024, 1),
        "traced_peak_kib": round((peak - traced0) / 1024, 1),
        "rss_growth_kib": rss1 - rss0,
    }


async def run_hot_path(ctx: Context) -> list[Run]:
    seconds = 0.02 if ctx.quick else 0.05  # per timed repeat
    repeats = 5
    memory_calls = 50_000 if ctx.quick else 1_000_000
    runs: list[Run] = []
    async with aclosing(
        each_run(ctx, server_options=lambda rep: {"token_lifetime": 3600.0}, connections=10)
    ) as slots:
        async for slot in slots:
            strategy, rep, strategy_cls = slot.strategy, slot.rep, slot.strategy_cls
            await Recorder().one(strategy)  # warm-up: a fresh token in the cache
            path = strategy.token_path()
            # Interleave the trivial await and the path so drift hits both alike.
            trivial: list[float] = []
            timed: list[float] = []
            bare: list[float] = []
            get_token = (
                strategy.manager.get_token
                if isinstance(strategy, ClientStrategy | MiddlewareStrategy)
                else None
            )
            n_trivial = await _calibrate(_trivial, seconds)
            n_path = await _calibrate(path, seconds)
            n_bare = await _calibrate(get_token, seconds) if get_token is not None else 0
            gc.collect()
            for _ in range(repeats):
                trivial += await _time_per_call(_trivial, n_trivial, 1)
                timed += await _time_per_call(path, n_path, 1)
                if get_token is not None:
                    bare += await _time_per_call(get_token, n_bare, 1)
            memory = await _memory(path, memory_calls) if rep == 0 else {}
            trivial_ns = min(trivial)
            metrics: dict[str, Any] = {
                "trivial_ns": round(trivial_ns, 1),
                "path_ns": round(min(timed), 1),
                "path_ns_median": round(statistics.median(timed), 1),
                "path_ratio": round(min(timed) / trivial_ns, 2),
            }
            if bare:
                metrics["get_token_ns"] = round(min(bare), 1)
                metrics["get_token_ratio"] = round(min(bare) / trivial_ns, 2)
            metrics.update({f"mem_{key}": value for key, value in memory.items()})
            runs.append(Run(NAME, "fresh cache", strategy_cls.name, rep, metrics))
            ctx.log(
                f"{NAME} rep {rep} {strategy_cls.name}: path {metrics['path_ns']} ns "
                f"({metrics['path_ratio']}x trivial {metrics['trivial_ns']} ns)"
                + (f", get_token {metrics['get_token_ratio']}x" if bare else "")
                + (f", memory {memory}" if memory else "")
            )
    return runs
