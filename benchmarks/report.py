"""Tables of medians (with min–max over the repetitions) and ratios against the baselines."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .strategies import by_name
from .workloads import Run

__all__ = ["Summary", "render", "summarize"]

#: Ratio columns "vs own transport": the baseline with the same HTTP stack.
OWN_TRANSPORT = {"authlib": "static-httpx", "azure-core": "static-azure"}
#: Targets quoted under the tables.
BASELINE = "static"
#: The fair baseline of the oversubscription workload (static behind FIFO admission).
FAIR = "static+fifo"


@attrs.frozen
class Stat:
    median: float
    low: float
    high: float
    n: int


Key = tuple[str, str, str]  # workload, variant, strategy


@attrs.define
class Summary:
    stats: dict[Key, dict[str, Stat]]
    error_kinds: dict[Key, Counter[str]]
    variants: dict[str, list[str]]
    strategies: dict[tuple[str, str], list[str]]

    def get(self, workload: str, variant: str, strategy: str, metric: str) -> Stat | None:
        return self.stats.get((workload, variant, strategy), {}).get(metric)


def summarize(runs: Iterable[Run]) -> Summary:
    values: dict[Key, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    kinds: dict[Key, Counter[str]] = defaultdict(Counter)
    variants: dict[str, list[str]] = defaultdict(list)
    strategies: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in runs:
        key = (run.workload, run.variant, run.strategy)
        if run.variant not in variants[run.workload]:
            variants[run.workload].append(run.variant)
        if run.strategy not in strategies[(run.workload, run.variant)]:
            strategies[(run.workload, run.variant)].append(run.strategy)
        for metric, value in run.metrics.items():
            if metric == "error_kinds":
                kinds[key].update(value)
            elif isinstance(value, bool):
                values[key][metric].append(1.0 if value else 0.0)
            elif isinstance(value, int | float):
                values[key][metric].append(float(value))
    stats = {
        key: {
            metric: Stat(statistics.median(vals), min(vals), max(vals), len(vals))
            for metric, vals in metrics.items()
        }
        for key, metrics in values.items()
    }
    return Summary(stats, dict(kinds), dict(variants), dict(strategies))


# --- formatting --------------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt(stat: Stat | None, digits: int = 0) -> str:
    if stat is None:
        return "–"
    text = _num(stat.median, digits)
    if stat.n > 1 and _num(stat.low, digits) != _num(stat.high, digits):
        text += f" [{_num(stat.low, digits)}–{_num(stat.high, digits)}]"
    return text


def fmt_bool(stat: Stat | None) -> str:
    if stat is None:
        return "–"
    if stat.low == stat.high:
        return "yes" if stat.median else "**no**"
    return f"{int(stat.median * stat.n)}/{stat.n} runs"


@attrs.frozen
class Column:
    header: str
    render: Callable[[Summary, str, str, str], str]


def metric(header: str, name: str, digits: int = 0) -> Column:
    return Column(header, lambda s, w, v, st: fmt(s.get(w, v, st, name), digits))


def flag(header: str, name: str) -> Column:
    return Column(header, lambda s, w, v, st: fmt_bool(s.get(w, v, st, name)))


def ratio(header: str, name: str, *, against: str | None = BASELINE, own: bool = False) -> Column:
    """Median of the strategy divided by the median of the baseline (or its own transport)."""

    def render(s: Summary, w: str, v: str, st: str) -> str:
        base_name = OWN_TRANSPORT.get(st) if own else against
        if base_name is None:
            return ""
        mine, base = s.get(w, v, st, name), s.get(w, v, base_name, name)
        if mine is None or base is None or base.median == 0:
            return "–"
        return f"{mine.median / base.median:.2f}×"

    return Column(header, render)


def cross_ratio(header: str, name: str, base_metric: str, *, against: str) -> Column:
    """Median ``name`` of the strategy over median ``base_metric`` of ``against``."""

    def render(s: Summary, w: str, v: str, st: str) -> str:
        mine, base = s.get(w, v, st, name), s.get(w, v, against, base_metric)
        if mine is None or base is None or base.median == 0:
            return "–"
        return f"{mine.median / base.median:.2f}×"

    return Column(header, render)


def note(header: str = "cannot") -> Column:
    def render(s: Summary, w: str, v: str, st: str) -> str:
        try:
            return by_name(st).limitation or ""
        except KeyError:
            return ""

    return Column(header, render)


#: The tables, per workload: (title, columns).
TABLES: dict[str, list[tuple[str, list[Column]]]] = {
    "cold-burst": [
        (
            "token-endpoint calls and errors",
            [
                metric("token calls", "token_calls"),
                metric("errors", "errors"),
                metric("burst done (s)", "elapsed_s", 2),
                ratio("time vs static", "elapsed_s"),
                metric("other load", "other_load", 2),
            ],
        )
    ],
    "expiry-crossing": [
        (
            "token calls and correctness",
            [
                metric("requests", "requests"),
                metric("token + refresh calls", "calls"),
                metric("tokens issued", "tokens_issued"),
                metric("calls / elapsed lifetime", "calls_per_lifetime", 2),
                metric("calls / token issued", "calls_per_issued", 2),
                metric("refresh reuse", "refresh_reuse"),
                metric("app 401s", "app_401"),
                metric("errors", "errors"),
                metric("waited, valid token held", "waits_valid"),
                metric("waited, no valid token", "waits_invalid"),
                metric("`stats.waits`", "stats_waits"),
            ],
        ),
        (
            "latency across expiry crossings",
            [
                metric("req/s", "rps"),
                metric("p50 ms", "p50_ms", 1),
                metric("p99 ms", "p99_ms", 1),
                metric("p99.9 ms", "p999_ms", 1),
                metric("max ms", "max_ms", 0),
                ratio("p50 vs static", "p50_ms"),
                ratio("p99 vs static", "p99_ms"),
                ratio("p99.9 vs static", "p999_ms"),
                ratio("p99 vs own transport", "p99_ms", own=True),
                metric("longest token wait ms", "longest_wait_ms", 1),
                metric("other load", "other_load", 2),
            ],
        ),
    ],
    "steady-throughput": [
        (
            "throughput",
            [
                metric("req/s", "rps"),
                ratio("vs static", "rps"),
                ratio("vs own transport", "rps", own=True),
                metric("client CPU µs/req", "client_cpu_us", 1),
                metric("server CPU share", "server_cpu_share", 2),
                metric("p99 ms", "p99_ms", 1),
                metric("errors", "errors"),
                metric("other load", "other_load", 2),
            ],
        )
    ],
    "faults": [
        (
            "errors and stalls",
            [
                metric("requests", "requests"),
                metric("errors", "errors"),
                metric("app 401s", "app_401"),
                metric("token calls", "token_calls"),
                metric("faulted", "faults_injected"),
                metric("refresh reuse", "refresh_reuse"),
                metric("waited, valid token held", "waits_valid"),
                metric("longest token wait ms", "longest_wait_ms", 0),
                metric("p99 ms", "p99_ms", 1),
                metric("max ms", "max_ms", 0),
                metric("other load", "other_load", 2),
                note(),
            ],
        )
    ],
    "hot-path": [
        (
            "token path without HTTP",
            [
                metric("trivial await ns", "trivial_ns", 0),
                metric("token path ns", "path_ns", 0),
                metric("× trivial", "path_ratio", 2),
                metric("get_token() ns", "get_token_ns", 0),
                metric("get_token × trivial", "get_token_ratio", 2),
                metric("traced growth KiB", "mem_traced_growth_kib", 1),
                metric("traced peak KiB", "mem_traced_peak_kib", 1),
                metric("RSS growth KiB", "mem_rss_growth_kib", 0),
            ],
        )
    ],
    "oversubscription": [
        (
            "latency and throughput against the fair static baseline",
            [
                metric("req/s", "rps"),
                ratio("req/s vs fair", "rps", against=FAIR),
                metric("p50 ms", "p50_ms", 1),
                ratio("p50 vs fair", "p50_ms", against=FAIR),
                metric("p99 ms", "p99_ms", 1),
                metric("p99.9 ms", "p999_ms", 1),
                metric("max ms", "max_ms", 0),
                cross_ratio("max vs fair p99.9", "max_ms", "p999_ms", against=FAIR),
                metric("errors", "errors"),
                metric("other load", "other_load", 2),
            ],
        ),
        (
            "waiting for a token",
            [
                metric("token + refresh calls", "token_calls"),
                metric("waited, valid token held", "waits_valid"),
                metric("waited, no valid token", "waits_invalid"),
                metric("longest token wait ms", "longest_wait_ms", 1),
                metric("`waits_with_valid_token`", "stats_waits_valid"),
                metric("`waits_without_valid_token`", "stats_waits_first"),
            ],
        ),
    ],
    "lost-refresh": [
        (
            "recovery",
            [
                metric("requests", "requests"),
                metric("errors", "errors"),
                flag("recovered", "recovered"),
                metric("last error at s", "last_error_s", 2),
                metric("refresh reuse", "refresh_reuse"),
                metric("families revoked", "families_revoked"),
                metric("token calls", "token_calls"),
                metric("refresh calls", "refresh_calls"),
                metric("other load", "other_load", 2),
                note(),
            ],
        )
    ],
    "webhook-intake": [
        (
            "answers to APIMW (the bar: every answer within 5,000 ms)",
            [
                metric("deliveries", "deliveries"),
                metric("errors", "errors"),
                metric("answers/s", "rps"),
                ratio("vs memory", "rps", against="memory"),
                metric("p50 ms", "p50_ms", 1),
                metric("p99 ms", "p99_ms", 1),
                ratio("p99 vs memory", "p99_ms", against="memory"),
                metric("max ms", "max_ms", 0),
                metric("% of 5 s", "budget_pct", 1),
                metric("drain s", "drain_s", 2),
                metric("other load", "other_load", 2),
            ],
        )
    ],
}


def _table(summary: Summary, workload: str, variant: str, columns: Sequence[Column]) -> str:
    header = ["strategy", *(c.header for c in columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for strategy in summary.strategies.get((workload, variant), []):
        cells = [strategy, *(c.render(summary, workload, variant, strategy) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kinds(summary: Summary, workload: str, variant: str) -> str:
    parts = []
    for strategy in summary.strategies.get((workload, variant), []):
        kinds = summary.error_kinds.get((workload, variant, strategy))
        if kinds:
            text = ", ".join(f"{k} ×{v}" for k, v in kinds.most_common())
            parts.append(f"- {strategy}: {text}")
    return ("Error kinds over all runs:\n" + "\n".join(parts)) if parts else ""


def render(summary: Summary, meta: dict[str, Any]) -> str:
    """All tables as Markdown (readable in a terminal too)."""
    out = [
        f"Medians over {meta['reps']} runs per strategy (min–max in brackets), strategies "
        f'alternating run by run; fake server: {meta["server"]}. "other load" is the CPU '
        f"(in cores, of {meta.get('cpus', '?')}) that other processes used during the timed "
        f"phase; before each run the benchmark waited up to {meta.get('idle_wait_s', 0):g} s "
        f"(60 s in all) for it to fall below 0.3 cores ({meta.get('idle_waited_s', 0):g} s "
        "waited).",
    ]
    for workload, tables in TABLES.items():
        for variant in summary.variants.get(workload, []):
            for title, columns in tables:
                out.append(f"\n### {workload} — {variant}: {title}\n")
                out.append(_table(summary, workload, variant, columns))
            kinds = _kinds(summary, workload, variant)
            if kinds:
                out.append("\n" + kinds)
    return "\n".join(out) + "\n"
