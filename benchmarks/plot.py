"""The latency plot of the expiry-crossing workload (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .workloads import Run

__all__ = ["plot_expiry"]

BIN = 0.1  # seconds per point of the time series


def plot_expiry(runs: Sequence[Run], path: Path, *, title: str) -> bool:
    """Write the plot; ``False`` if there is nothing to plot."""
    runs = [r for r in runs if r.workload == "expiry-crossing" and r.samples is not None]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_strategy: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_strategy[run.strategy].append(run)

    fig, (ax_time, ax_ccdf) = plt.subplots(1, 2, figsize=(15, 6.5))
    cmap = plt.get_cmap("tab10")
    for index, (strategy, strategy_runs) in enumerate(by_strategy.items()):
        color = cmap(index % 10)
        style = "--" if strategy.startswith("static-") else "-"
        width = 2.2 if strategy.startswith("apimw_async") or strategy == "static" else 1.2
        # Left: the slowest request started in each 100-ms bin, first repetition.
        starts, latencies = strategy_runs[0].samples or ([], [])
        worst: dict[int, float] = {}
        for start, latency in zip(starts, latencies, strict=True):
            b = int(start / BIN)
            worst[b] = max(worst.get(b, 0.0), latency)
        bins = sorted(worst)
        ax_time.plot(
            [b * BIN for b in bins],
            [worst[b] * 1000 for b in bins],
            style,
            color=color,
            linewidth=width,
            label=strategy,
        )
        # Right: fraction of requests slower than x, all repetitions.
        every = sorted(lat for run in strategy_runs for lat in (run.samples or ([], []))[1])
        n = len(every)
        if n:
            step = max(1, n // 4000)
            xs = [every[i] * 1000 for i in range(0, n, step)] + [every[-1] * 1000]
            ys = [1 - i / n for i in range(0, n, step)] + [1 / n]
            ax_ccdf.plot(xs, ys, style, color=color, linewidth=width, label=strategy)
    ax_time.set_yscale("log")
    ax_time.set_xlabel("time since start of run (s); tokens live 2 s")
    ax_time.set_ylabel("slowest request started in each 100 ms (ms, log)")
    ax_time.set_title("Latency over time (first repetition)")
    ax_time.grid(True, which="both", alpha=0.3)
    ax_ccdf.set_xscale("log")
    ax_ccdf.set_yscale("log")
    ax_ccdf.set_xlabel("request latency (ms, log)")
    ax_ccdf.set_ylabel("fraction of requests slower (log)")
    ax_ccdf.set_title("Latency distribution (all repetitions)")
    ax_ccdf.grid(True, which="both", alpha=0.3)
    ax_ccdf.legend(loc="lower left", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
