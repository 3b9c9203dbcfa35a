"""The strategies compared: baselines, hand-rolled code, the peers, and ``apimw_async``."""

from __future__ import annotations

from ._httpx import HTTPX_NAME
from .apimw import ClientStrategy, MiddlewareStrategy
from .authlib_peer import AuthlibStrategy
from .azure_peer import AzureStrategy
from .base import Env, Probe, Strategy, Unsupported, refresh_skew
from .handrolled import NaiveLockStrategy, NaiveStrategy
from .static import StaticAzureStrategy, StaticHttpxStrategy, StaticStrategy

__all__ = [
    "ALL",
    "HTTPX_NAME",
    "MAIN",
    "TRANSPORT_BASELINES",
    "AuthlibStrategy",
    "AzureStrategy",
    "ClientStrategy",
    "Env",
    "MiddlewareStrategy",
    "NaiveLockStrategy",
    "NaiveStrategy",
    "Probe",
    "StaticAzureStrategy",
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


def by_name(name: str) -> type[Strategy]:
    for strategy in ALL:
        if strategy.name == name:
            return strategy
    raise KeyError(name)
