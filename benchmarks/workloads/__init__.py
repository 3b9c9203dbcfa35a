"""The workloads, in the order they run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .cold_burst import run_cold_burst
from .common import Context, Run
from .expiry import run_expiry
from .faults import run_faults
from .hot_path import run_hot_path
from .lost_refresh import run_lost_refresh
from .oversubscription import run_oversubscription
from .throughput import run_throughput
from .webhook_intake import run_webhook_intake

__all__ = ["WORKLOADS", "Context", "Run"]

#: name → (runner, its rows: "main", "all" (incl. transport baselines), "throughput" (all and
#: the Client's typed path) or "oversubscription" (see benchmarks.strategies))
WORKLOADS: dict[str, tuple[Callable[[Context], Awaitable[list[Run]]], str]] = {
    "cold-burst": (run_cold_burst, "main"),
    "expiry-crossing": (run_expiry, "all"),
    "steady-throughput": (run_throughput, "throughput"),
    "faults": (run_faults, "main"),
    "hot-path": (run_hot_path, "main"),
    "lost-refresh": (run_lost_refresh, "main"),
    "oversubscription": (run_oversubscription, "oversubscription"),
    "webhook-intake": (run_webhook_intake, "main"),  # its own rows, not token strategies
}
