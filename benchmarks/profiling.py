"""``--profile DIR``: pyinstrument profiles of the apimw_async hot path.

Three profiles, each as text (``.txt``) and HTML (``.html``):

* ``throughput-<strategy>``: the steady-throughput loop (50 workers, 20,000 requests, fake
  server as chosen with ``--server``) for ``static``, the Client (``client.request`` and the
  typed ``client.auth.me()``) and the middleware, so the
  SDK's frames can be compared with plain aiohttp's;
* ``get-token``: 1,000,000 ``await manager.get_token()`` + ``token.authorization`` on a fresh
  cache (no HTTP).

pyinstrument samples wall-clock time, which on a busy machine blames preemption on whatever
frame happened to run; so each workload is profiled a second time with :mod:`cProfile` timed by
``time.process_time`` (CPU time only), written as ``cprofile-<name>.txt`` (top functions by
own time). cProfile's per-call overhead inflates small functions: read its numbers relatively.

pyinstrument is not a dependency (not even of the ``bench`` extra): install it next to the
benchmarks to use this option.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .server import InProcessServers, ProcessServers, ServerFactory
from .strategies import (
    ClientMeStrategy,
    ClientStrategy,
    MiddlewareStrategy,
    StaticStrategy,
    Strategy,
)
from .workloads.common import Context, Recorder, closed_loop, open_run

__all__ = ["profile_hot_path"]

REQUESTS = 20_000
WORKERS = 50
GET_TOKEN_CALLS = 1_000_000


def _profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit(
            "--profile needs pyinstrument (pip install pyinstrument; not a project dependency)"
        ) from None
    # async_mode="disabled": attribute CPU samples to the frames running, not to awaiters.
    return Profiler(interval=0.0002, async_mode="disabled")


async def _cpu_profile(directory: Path, name: str, body: Callable[[], Awaitable[Any]]) -> None:
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    await body()
    profile.disable()
    _save_cprofile(profile, directory, name)


def _save_cprofile(profile: cProfile.Profile, directory: Path, name: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(35)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"cprofile-{name}.txt").write_text(out.getvalue())
    print(f"profile written: {directory / ('cprofile-' + name)}.txt")


def _save(profiler: Any, directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.txt").write_text(
        profiler.output_text(unicode=True, color=False, show_all=False)
    )
    (directory / f"{name}.html").write_text(profiler.output_html())
    print(f"profile written: {directory / name}.txt")


async def _throughput(servers: ServerFactory, cls: type[Strategy], directory: Path) -> None:
    ctx = Context(servers=servers, quick=False, reps=1, strategies=(cls,), log=print)
    async with open_run(ctx, cls, server_options={"token_lifetime": 3600.0}, connections=100) as (
        _,
        strategy,
    ):
        name = f"throughput-{cls.name.replace(' ', '-')}"
        await closed_loop(strategy, Recorder(), WORKERS, count=500)
        profiler = _profiler()
        profiler.start()
        await closed_loop(strategy, Recorder(), WORKERS, count=REQUESTS)
        profiler.stop()
        _save(profiler, directory, name)
        await _cpu_profile(
            directory, name, lambda: closed_loop(strategy, Recorder(), WORKERS, count=REQUESTS)
        )


async def _get_token(servers: ServerFactory, directory: Path) -> None:
    ctx = Context(servers=servers, quick=False, reps=1, strategies=(ClientStrategy,), log=print)
    async with open_run(
        ctx, ClientStrategy, server_options={"token_lifetime": 3600.0}, connections=10
    ) as (_, strategy):
        await Recorder().one(strategy)
        assert isinstance(strategy, ClientStrategy)
        manager = strategy.manager

        async def loop() -> None:
            for _ in range(GET_TOKEN_CALLS):
                (await manager.get_token()).authorization  # noqa: B018 - the header is timed

        profiler = _profiler()
        profiler.start()
        await loop()
        profiler.stop()
        _save(profiler, directory, "get-token")
        await _cpu_profile(directory, "get-token", loop)


def profile_hot_path(directory: Path, *, servers_kind: str) -> None:
    servers: ServerFactory = ProcessServers() if servers_kind == "process" else InProcessServers()

    async def main() -> None:
        for cls in (StaticStrategy, ClientStrategy, ClientMeStrategy, MiddlewareStrategy):
            await _throughput(servers, cls, directory)
        await _get_token(servers, directory)

    try:
        asyncio.run(main())
    finally:
        servers.close()
