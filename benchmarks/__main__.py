"""``python -m benchmarks``: every workload for every strategy, tables of medians.

Strategies alternate run by run (A B C … A B C …) within each workload, for several
repetitions; each run gets a fresh fake server. Options: ``--quick`` (about a minute),
``--json PATH`` (all runs and the environment), ``--reps N``, ``--only`` / ``--strategies``
(subsets, for development), ``--server process|inproc`` (where the fake server runs),
``--plot PATH`` (the expiry-crossing latency plot; a full run writes
``benchmarks/expiry_latency.png`` by default), ``--markdown PATH`` (the tables) and
``--profile DIR`` (pyinstrument profiles of the apimw_async hot path, if pyinstrument is
installed).

The peers (authlib, azure-core, httpx) and matplotlib come from the ``bench`` extra
(``pip install -e '.[bench]'``). Without them the rows that need them are left out, the run
says so, and everything else still runs; ``--help`` works either way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .report import render, summarize
from .server import InProcessServers, ProcessServers, ServerFactory
from .strategies import (
    ALL,
    BENCH_EXTRA,
    EVERY,
    MAIN,
    OVERSUBSCRIPTION,
    THROUGHPUT,
    TRANSPORT_BASELINES,
    UNAVAILABLE,
    Strategy,
    by_name,
)
from .workloads import WORKLOADS, Context, Run
from .workloads.common import other_load

HERE = Path(__file__).resolve().parent
DEFAULT_PLOT = HERE / "expiry_latency.png"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.replace("``", ""),  # plain text on a terminal
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: one repetition, shorter runs, no transport baselines",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save all results as JSON")
    parser.add_argument("--reps", type=int, help="repetitions per strategy (default 3; --quick: 1)")
    parser.add_argument(
        "--only", help=f"comma-separated workloads (default all: {', '.join(WORKLOADS)})"
    )
    parser.add_argument("--strategies", help="comma-separated strategy names (default all)")
    parser.add_argument(
        "--server",
        choices=("process", "inproc"),
        default="process",
        help="run the fake server in its own process (default) or in the clients' event loop",
    )
    parser.add_argument(
        "--factors",
        help="oversubscription: comma-separated workers-per-connection factors (default 2,5,10)",
    )
    parser.add_argument("--plot", type=Path, metavar="PATH", help="expiry-crossing latency plot")
    parser.add_argument("--no-plot", action="store_true", help="do not write the plot")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="save the tables")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="profile the apimw_async hot path"
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for other processes to use < 0.3 cores, "
        "at most 60 s in all (default 10; --quick: 0)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="print the tables of a saved run (no benchmark is run)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-run progress lines")
    return parser.parse_args(argv)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "apimw-async":
            from apimw_async import __version__

            return f"{__version__} (source tree)"
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65_536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def _git() -> str:
    """The commit of the source tree, and whether the package differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "apimw_async"],  # noqa: S607
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + uncommitted changes in apimw_async" if dirty else commit


def _meta(args: argparse.Namespace, servers: ServerFactory, reps: int) -> dict[str, Any]:
    return {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": _git(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "versions": {
            name: _version(name)
            for name in (
                "apimw-async",
                "aiohttp",
                "yarl",
                "authlib",
                "httpx",
                "httpx2",
                "azure-core",
                "matplotlib",
            )
        },
        "server": servers.where,
        "unavailable": dict(UNAVAILABLE),
        "quick": bool(args.quick),
        "reps": reps,
        "nofile": _raise_nofile(),
    }


def _select(args: argparse.Namespace) -> tuple[list[str], tuple[type[Strategy], ...] | None]:
    workloads = list(WORKLOADS)
    if args.only:
        workloads = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown:
            raise SystemExit(f"unknown workload(s): {', '.join(unknown)}")
    chosen: tuple[type[Strategy], ...] | None = None
    if args.strategies:
        names = [s.strip() for s in args.strategies.split(",") if s.strip()]
        missing = [n for n in names if n in UNAVAILABLE]
        if missing:
            needs = ", ".join(f"{n} needs {UNAVAILABLE[n]}" for n in missing)
            raise SystemExit(f"{needs}, which is not installed: {BENCH_EXTRA}")
        try:
            chosen = tuple(by_name(name) for name in names)
        except KeyError as exc:
            names = ", ".join(s.name for s in EVERY)
            raise SystemExit(f"unknown strategy {exc}; choose from: {names}") from None
    return workloads, chosen


def _factors(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        factors = tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise SystemExit(f"--factors takes integers, not {text!r}") from None
    if not factors or min(factors) < 1:
        raise SystemExit("--factors takes positive integers")
    return factors


def _rows(which: str, *, quick: bool) -> tuple[type[Strategy], ...]:
    """The strategies of a workload; --quick leaves out the transport baselines."""
    if which == "oversubscription":
        return OVERSUBSCRIPTION
    if which == "throughput":
        return THROUGHPUT if quick else THROUGHPUT + TRANSPORT_BASELINES
    return MAIN if which == "main" or quick else ALL


async def _run(
    args: argparse.Namespace, servers: ServerFactory, reps: int, meta: dict[str, Any]
) -> list[Run]:
    workloads, chosen = _select(args)
    idle_wait = args.idle_wait if args.idle_wait is not None else (0.0 if args.quick else 10.0)
    idle_budget = [60.0]
    meta["idle_wait_s"] = idle_wait
    meta["other_load_before"] = round(await other_load(1.0), 2)

    def log(line: str) -> None:
        if not args.quiet:
            print(f"  [{time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    runs: list[Run] = []
    for name in workloads:
        runner, which = WORKLOADS[name]
        strategies = _rows(which, quick=args.quick)
        if chosen is not None:
            strategies = tuple(s for s in chosen if s in strategies)
            if not any(s.name == "static" for s in strategies) and name != "hot-path":
                log(f"note: {name} without 'static', the ratios stay empty")
        ctx = Context(
            servers=servers,
            quick=args.quick,
            reps=reps,
            strategies=strategies,
            log=log,
            idle_wait=idle_wait,
            idle_budget=idle_budget,
            factors=_factors(args.factors),
        )
        t0 = time.perf_counter()
        runs += await runner(ctx)
        if args.json:
            # Saved after every workload: a later failure does not lose the finished ones.
            _save(args.json, meta, runs)
        meta["idle_waited_s"] = round(meta.get("idle_waited_s", 0.0) + ctx.idle_waited, 1)
        meta.setdefault("workload_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        log(f"{name} done in {time.perf_counter() - t0:.1f}s")
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    return runs


def _save(path: Path, meta: dict[str, Any], runs: list[Run]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "runs": [run.as_dict() for run in runs]}
    path.write_text(json.dumps(document, indent=1) + "\n")


def _reprint(path: Path) -> int:
    document = json.loads(path.read_text())
    runs = [
        Run(r["workload"], r["variant"], r["strategy"], r["rep"], r["metrics"])
        for r in document["runs"]
    ]
    print(render(summarize(runs), document["meta"]))
    return 0


def _missing_extra() -> str | None:
    """One line naming what the ``bench`` extra would add, or ``None`` if it is installed."""
    if not UNAVAILABLE:
        return None
    modules = sorted(set(UNAVAILABLE.values()))
    rows = ", ".join(UNAVAILABLE)
    return (
        f"note: left out the {rows} rows ({', '.join(modules)} not installed); "
        f"for every row: {BENCH_EXTRA}"
    )


def _has_matplotlib() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.from_json:
        return _reprint(args.from_json)
    _select(args)  # a bad --only / --strategies ends here, before anything is printed
    missing = _missing_extra()
    if missing is not None:
        print(missing, file=sys.stderr, flush=True)
    # Every library logs at ERROR only, so that retries and background-refresh warnings of
    # any strategy cost the same (nothing) and do not flood the terminal.
    logging.basicConfig(level=logging.ERROR)
    reps = args.reps or (1 if args.quick else 3)
    servers: ServerFactory = ProcessServers() if args.server == "process" else InProcessServers()
    try:
        meta = _meta(args, servers, reps)
        runs = asyncio.run(_run(args, servers, reps, meta))
    finally:
        servers.close()
    summary = summarize(runs)
    tables = render(summary, meta)
    print(tables)
    print(
        f"total {meta['total_seconds']} s; per workload: "
        + ", ".join(f"{k} {v} s" for k, v in meta.get("workload_seconds", {}).items())
    )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(tables)
    if missing is not None:
        print(missing)
    if args.json:
        _save(args.json, meta, runs)
        print(f"results saved to {args.json}")
    plot_path = args.plot or (None if args.quick else DEFAULT_PLOT)
    if plot_path is not None and not args.no_plot and not _has_matplotlib():
        print(f"no plot: matplotlib is not installed ({BENCH_EXTRA})")
    elif plot_path is not None and not args.no_plot:
        from .plot import plot_expiry

        title = (
            "Expiry crossing: 2-s tokens, 200 workers, 50 ms token latency "
            f"({meta['date'][:10]}, {meta['cpus']} cores, server: {args.server})"
        )
        if plot_expiry(runs, plot_path, title=title):
            print(f"plot saved to {plot_path}")
    if args.profile:
        from .profiling import profile_hot_path

        profile_hot_path(args.profile, servers_kind=args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
