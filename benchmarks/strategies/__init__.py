"""The strategies compared: baselines, hand-rolled code, the peers, and ``apimw_async``.

The peers (authlib, azure-core, and the fixed-header baselines on their transports) come from
the ``bench`` extra. Without it their rows are left out, :data:`UNAVAILABLE` says which and
why, and the rest still runs.
"""

from __future__ import annotations

import importlib

from .apimw import (
    ClientMeStrategy,
    ClientStrategy,
    MiddlewareFairStrategy,
    MiddlewareStrategy,
    SharedSessionStrategy,
)
from .base import Env, Probe, Strategy, Unsupported, refresh_skew
from .handrolled import NaiveLockStrategy, NaiveStrategy
from .static import StaticFairStrategy, StaticStrategy

__all__ = [
    "ALL",
    "BENCH_EXTRA",
    "EVERY",
    "MAIN",
    "OVERSUBSCRIPTION",
    "THROUGHPUT",
    "TRANSPORT_BASELINES",
    "UNAVAILABLE",
    "ClientMeStrategy",
    "ClientStrategy",
    "Env",
    "MiddlewareFairStrategy",
    "MiddlewareStrategy",
    "NaiveLockStrategy",
    "NaiveStrategy",
    "Probe",
    "SharedSessionStrategy",
    "StaticFairStrategy",
    "StaticStrategy",
    "Strategy",
    "Unsupported",
    "by_name",
    "refresh_skew",
]

#: How to install the peers.
BENCH_EXTRA = "pip install -e '.[bench]'"

#: Strategy name -> the distribution that could not be imported, for the missing peers.
UNAVAILABLE: dict[str, str] = {}

#: Top-level module -> its distribution, where they differ.
_DISTRIBUTIONS = {"azure": "azure-core"}


def _peers(module: str, *rows: tuple[str, str]) -> dict[str, type[Strategy]]:
    """The strategy classes of ``module`` by name, or none (recorded in UNAVAILABLE)."""
    try:
        loaded = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        top = (exc.name or module).split(".")[0]
        for name, _ in rows:
            UNAVAILABLE[name] = _DISTRIBUTIONS.get(top, top)
        return {}
    return {name: getattr(loaded, cls) for name, cls in rows}


_PEERS = {
    **_peers("authlib_peer", ("authlib", "AuthlibStrategy")),
    **_peers("azure_peer", ("azure-core", "AzureStrategy")),
    **_peers(
        "static_peers",
        ("static-httpx", "StaticHttpxStrategy"),
        ("static-azure", "StaticAzureStrategy"),
    ),
}


def _available(*names: str) -> tuple[type[Strategy], ...]:
    return tuple(_PEERS[name] for name in names if name in _PEERS)


#: The rows the issue asks for, in table order; ``static`` is the baseline of every ratio.
MAIN: tuple[type[Strategy], ...] = (
    StaticStrategy,
    NaiveStrategy,
    NaiveLockStrategy,
    *_available("authlib", "azure-core"),
    ClientStrategy,
    MiddlewareStrategy,
)

#: The peers' transports with a fixed header: how much of a peer's gap is not token handling.
TRANSPORT_BASELINES: tuple[type[Strategy], ...] = _available("static-httpx", "static-azure")

ALL: tuple[type[Strategy], ...] = MAIN + TRANSPORT_BASELINES

#: Steady throughput adds the Client's typed path (``client.auth.me()``).
THROUGHPUT: tuple[type[Strategy], ...] = (*MAIN[:-1], ClientMeStrategy, MAIN[-1])

#: The oversubscription rows: the unfair and the fair baseline, then ours with admission.
OVERSUBSCRIPTION: tuple[type[Strategy], ...] = (
    StaticStrategy,
    StaticFairStrategy,
    ClientStrategy,
    MiddlewareFairStrategy,
    SharedSessionStrategy,
)

#: Every strategy available, for lookups by name.
EVERY: tuple[type[Strategy], ...] = (
    *ALL,
    ClientMeStrategy,
    StaticFairStrategy,
    MiddlewareFairStrategy,
    SharedSessionStrategy,
)


def by_name(name: str) -> type[Strategy]:
    """The strategy called ``name``; :class:`KeyError` if there is none or its peer is missing
    (see :data:`UNAVAILABLE`)."""
    for strategy in EVERY:
        if strategy.name == name:
            return strategy
    raise KeyError(name)
