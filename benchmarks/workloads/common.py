"""What the workloads share: one run's setup, closed-loop workers, counters, percentiles."""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import attrs

from ..server import Server, ServerFactory
from ..strategies import Env, Strategy

__all__ = [
    "Context",
    "LoadMeter",
    "Measured",
    "Recorder",
    "Run",
    "Slot",
    "closed_loop",
    "delta",
    "each_run",
    "measure",
    "open_run",
    "other_load",
    "percentile",
    "wait_for_idle",
]


@attrs.define
class Run:
    """One run of one strategy in one workload (variant: e.g. the burst size)."""

    workload: str
    variant: str
    strategy: str
    rep: int
    metrics: dict[str, Any]
    #: Latency samples ``(start offsets s, latencies s)`` for the plot; not saved to JSON.
    samples: tuple[Sequence[float], Sequence[float]] | None = attrs.field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "variant": self.variant,
            "strategy": self.strategy,
            "rep": self.rep,
            "metrics": self.metrics,
        }


@attrs.define
class Context:
    """Settings of the whole benchmark invocation."""

    servers: ServerFactory
    quick: bool
    reps: int
    strategies: tuple[type[Strategy], ...]
    log: Callable[[str], None]
    #: Before each run, wait up to this many seconds for other processes to go quiet ...
    idle_wait: float = 0.0
    #: ... but no more than this in all (shared by every workload of the invocation).
    idle_budget: list[float] = attrs.field(factory=lambda: [0.0])
    #: Seconds spent waiting for that, over the whole invocation.
    idle_waited: float = 0.0
    #: Oversubscription factors to run (``None``: the workload's own list).
    factors: tuple[int, ...] | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def delta(before: dict[str, Any], after: dict[str, Any], *names: str) -> int:
    """Sum of the growth of the named server counters."""
    return sum(int(after[name]) - int(before[name]) for name in names)


async def mint_static_token(server: Server, lifetime: float) -> str:
    """A token that outlives the run, for the ``static`` baselines (made outside any timing)."""
    server.configure(token_lifetime=86_400.0)
    try:
        creds = server.credentials
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.base_url}/auth/token",
                json={"api_key": creds.api_key, "api_secret": creds.api_secret},
            ) as resp,
        ):
            payload = await resp.json()
        token: str = payload["data"]["access_token"]
        return token
    finally:
        server.configure(token_lifetime=lifetime)


async def other_load(window: float = 0.25) -> float:
    """CPU (in cores) used by other processes over ``window`` seconds while this one sleeps."""
    busy0, cpu0, t0 = _busy_seconds(), time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    elapsed = time.perf_counter() - t0
    busy = _busy_seconds() - busy0 - (time.process_time() - cpu0)
    return max(0.0, busy / elapsed)


async def wait_for_idle(ctx: Context, threshold: float = 0.3) -> None:
    """Wait (at most ``ctx.idle_wait`` s) until other processes use < ``threshold`` cores."""
    if ctx.idle_wait <= 0 or ctx.idle_budget[0] <= 0:
        return
    t0 = time.perf_counter()
    deadline = t0 + min(ctx.idle_wait, ctx.idle_budget[0])
    while await other_load(0.1) >= threshold and time.perf_counter() < deadline:
        pass
    waited = time.perf_counter() - t0
    ctx.idle_waited += waited
    ctx.idle_budget[0] -= waited


@contextlib.asynccontextmanager
async def open_run(
    ctx: Context,
    strategy_cls: type[Strategy],
    *,
    server_options: dict[str, Any],
    connections: int,
    instrument: bool = False,
) -> AsyncIterator[tuple[Server, Strategy]]:
    """A fresh fake server and a started strategy pointed at it (no token fetched yet)."""
    await wait_for_idle(ctx)
    server = await ctx.servers.start(**server_options)
    lifetime = float(server_options.get("token_lifetime", 3600.0))
    try:
        token = await mint_static_token(server, lifetime) if strategy_cls.baseline else ""
        env = Env(
            base_url=server.base_url,
            credentials=server.credentials,
            token_lifetime=lifetime,
            connections=connections,
            instrument=instrument,
            static_token=token,
        )
        strategy = strategy_cls(env)
        await strategy.start()
        try:
            yield server, strategy
        finally:
            await strategy.close()
    finally:
        await server.stop()


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / ticks


class LoadMeter:
    """How much CPU *other* processes used during a timed phase (in cores).

    The machine is small and may be shared; a run with noticeable other load is flagged in the
    results rather than silently mixed in. Other load = machine busy time − this process's CPU
    time − the fake server's CPU time (when it runs in its own process).
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._t0 = time.perf_counter()
        self._busy0 = _busy_seconds()
        self._cpu0 = time.process_time()
        self._server0 = float(server.stats()["cpu_s"])

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        busy = _busy_seconds() - self._busy0
        own = time.process_time() - self._cpu0
        server = float(self._server.stats()["cpu_s"]) - self._server0
        if math.isnan(server):
            server = 0.0
        other = max(0.0, busy - own - server)
        return {"other_load": round(other / elapsed, 2) if elapsed > 0 else 0.0}


class Recorder:
    """Outcomes of requests as the application sees them."""

    def __init__(self, *, keep_samples: bool = False, origin: float | None = None) -> None:
        self.ok = 0
        self.app_401 = 0
        self.errors: Counter[str] = Counter()
        # Arrays, not lists: the garbage collector does not walk them. A list of 10⁵–10⁶
        # floats kept alive makes every full collection longer, and the pauses land in the
        # latency of whichever strategy runs later.
        self.latencies = array.array("d")
        self.starts: array.array[float] | None = array.array("d") if keep_samples else None
        self.origin = time.perf_counter() if origin is None else origin
        #: perf_counter() of the last error seen.
        self.last_error_at = float("-inf")

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    async def one(self, strategy: Strategy) -> None:
        """Send one request and record what the application sees."""
        t0 = time.perf_counter()
        try:
            status = await strategy.request()
        except Exception as exc:  # every failure counts; the kind is recorded
            self._error(type(exc).__name__)
        else:
            if status == 200:
                self.ok += 1
            elif status == 401:
                self.app_401 += 1
                self._error("HTTP 401")
            else:
                self._error(f"HTTP {status}")
        t1 = time.perf_counter()
        self.latencies.append(t1 - t0)
        if self.starts is not None:
            self.starts.append(t0 - self.origin)

    def _error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.last_error_at = time.perf_counter()

    def latency_metrics(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 3),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
            "p999_ms": round(percentile(ordered, 0.999) * 1000, 3),
            "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
        }

    def outcome_metrics(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.error_count,
            "app_401": self.app_401,
            "error_kinds": dict(self.errors),
        }


async def closed_loop(
    strategy: Strategy,
    recorder: Recorder,
    workers: int,
    *,
    until: float | None = None,
    duration: float | None = None,
    count: int | None = None,
) -> float:
    """``workers`` coroutines send requests back to back until time ``until`` (perf_counter),
    for ``duration`` seconds, or until ``count`` requests were started; returns the elapsed
    seconds."""
    started = 0
    if duration is not None:
        until = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal started
        while True:
            if until is not None and time.perf_counter() >= until:
                return
            if count is not None:
                if started >= count:
                    return
                started += 1
            await recorder.one(strategy)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - t0


# --- the run loop every workload shares ---------------------------------------------------------


@attrs.define
class Slot:
    """One run in progress: which repetition and strategy, its fresh server and strategy."""

    rep: int
    strategy_cls: type[Strategy]
    server: Server
    strategy: Strategy

    @property
    def name(self) -> str:
        return self.strategy_cls.name


@attrs.define
class Measured:
    """What :func:`measure` saw around a timed phase."""

    elapsed: float
    before: dict[str, Any]
    after: dict[str, Any]
    load: dict[str, float]
    counters_before: dict[str, Any]
    counters_after: dict[str, Any]
    probe: dict[str, Any]

    def delta(self, *names: str) -> int:
        """Growth of the named server counters during the phase."""
        return delta(self.before, self.after, *names)

    def counter_delta(self, name: str) -> int | None:
        """Growth of a strategy counter during the phase (``None`` if it has none)."""
        if name not in self.counters_after:
            return None
        return int(self.counters_after[name]) - int(self.counters_before.get(name, 0))


async def each_run(
    ctx: Context,
    *,
    server_options: Callable[[int], dict[str, Any]],
    connections: int,
    instrument: bool = False,
    strategies: Sequence[type[Strategy]] | None = None,
) -> AsyncIterator[Slot]:
    """Repetitions × strategies, alternating strategies run by run, each with a fresh server
    (built with ``server_options(rep)``) and a started strategy. Use it with
    ``contextlib.aclosing`` so that a failing run still stops its server."""
    for rep in range(ctx.reps):
        for strategy_cls in strategies if strategies is not None else ctx.strategies:
            async with open_run(
                ctx,
                strategy_cls,
                server_options=server_options(rep),
                connections=connections,
                instrument=instrument,
            ) as (server, strategy):
                yield Slot(rep, strategy_cls, server, strategy)


async def measure(slot: Slot, body: Callable[[], Awaitable[object]]) -> Measured:
    """Run the timed phase ``body`` with the server's counters, the strategy's counters, the
    probe and the other processes' CPU load taken around it."""
    server, strategy = slot.server, slot.strategy
    counters_before = strategy.counters()
    before = server.stats()
    meter = LoadMeter(server)
    t0 = time.perf_counter()
    await body()
    elapsed = time.perf_counter() - t0
    load = meter.stop()
    after = server.stats()
    return Measured(
        elapsed=elapsed,
        before=before,
        after=after,
        load=load,
        counters_before=counters_before,
        counters_after=strategy.counters(),
        probe=strategy.probe.as_dict(),
    )
