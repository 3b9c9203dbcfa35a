"""The strategies compared: baselines, hand-rolled code, the peers, and ``apimw_async``."""

from __future__ import annotations

from ._httpx import HTTPX_NAME
from .apimw import (
    ClientMeStrategy,
    ClientStrategy,
    MiddlewareFairStrategy,
    MiddlewareStrategy,
    SharedSessionStrategy,
)
from .authlib_peer import AuthlibStrategy
from .azure_peer import AzureStrategy
from .base import Env, Probe, Strategy, Unsupported, refresh_skew
from .handrolled import NaiveLockStrategy, NaiveStrategy
from .static import (
    StaticAzureStrategy,
    StaticFairStrategy,
    StaticHttpxStrategy,
    StaticStrategy,
)

__all__ = [
    "ALL",
    "EVERY",
    "HTTPX_NAME",
    "MAIN",
    "OVERSUBSCRIPTION",
    "THROUGHPUT",
    "TRANSPORT_BASELINES",
    "AuthlibStrategy",
    "AzureStrategy",
    "ClientMeStrategy",
    "ClientStrategy",
    "Env",
    "MiddlewareFairStrategy",
    "MiddlewareStrategy",
    "NaiveLockStrategy",
    "NaiveStrategy",
    "Probe",
    "SharedSessionStrategy",
    "StaticAzureStrategy",
    "StaticFairStrategy",
    "StaticHttpxStrategy",
    "StaticStrategy",
    "Strategy",
    "Unsupported",
    "by_name",
    "refresh_skew",
]

#: The rows the issue asks for, in table order; ``static`` is the baseline of every ratio.
MAIN: tuple[type[Strategy], ...] = (
    StaticStrategy,
    NaiveStrategy,
    NaiveLockStrategy,
    AuthlibStrategy,
    AzureStrategy,
    ClientStrategy,
    MiddlewareStrategy,
)

#: The peers' transports with a fixed header: how much of a peer's gap is not token handling.
TRANSPORT_BASELINES: tuple[type[Strategy], ...] = (StaticHttpxStrategy, StaticAzureStrategy)

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

#: Every strategy, for lookups by name.
EVERY: tuple[type[Strategy], ...] = (
    *ALL,
    ClientMeStrategy,
    StaticFairStrategy,
    MiddlewareFairStrategy,
    SharedSessionStrategy,
)


def by_name(name: str) -> type[Strategy]:
    for strategy in EVERY:
        if strategy.name == name:
            return strategy
    raise KeyError(name)
