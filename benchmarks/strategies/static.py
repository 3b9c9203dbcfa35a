"""The baselines: a fixed, valid bearer header and no token work at all.

``static`` is plain aiohttp, the physical limit every aiohttp-based strategy is compared with.
``static-httpx`` and ``static-azure`` (:mod:`.static_peers`, which need the ``bench`` extra)
are the same fixed header on the transports the peers use (httpx under authlib, the azure-core
pipeline over aiohttp under azure-core); they tell how much of a peer's gap is its transport
rather than its token handling.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from apimw_async._admission import Admission

from .base import Env, Strategy

__all__ = ["StaticFairStrategy", "StaticStrategy"]


class _Static(Strategy):
    baseline = True

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        if not env.static_token:
            raise ValueError("a static strategy needs Env.static_token")
        self._header = f"Bearer {env.static_token}"

    def token_path(self) -> Callable[[], Awaitable[Any]]:
        header = self._header

        async def path() -> str:
            return header

        return path

    async def _probe(self) -> None:
        """In instrumented workloads, pay the probe's cost like every token strategy does."""
        if self.env.instrument:
            await self.probe.measure(self._constant)

    async def _constant(self) -> str:
        return self._header


class StaticStrategy(_Static):
    name = "static"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.env.connections),
            timeout=aiohttp.ClientTimeout(total=self.env.timeout),
        )
        self._headers = {"Authorization": self._header}

    async def request(self) -> int:
        await self._probe()
        async with self._session.get(self.env.me_url, headers=self._headers) as resp:
            json.loads(await resp.read())
            return resp.status

    async def close(self) -> None:
        await self._session.close()


class StaticFairStrategy(StaticStrategy):
    """``static`` behind a FIFO admission queue with the pool's limit: the fair baseline.

    Requests take a slot in arrival order before aiohttp's pool sees them, so the pool never
    has a queue of its own (whose order is not fair). The queue is apimw_async's
    :class:`~apimw_async.Admission`, the same one the Client uses; no token work.
    """

    name = "static+fifo"

    async def start(self) -> None:
        await super().start()
        self._gate = Admission(self.env.connections)

    async def request(self) -> int:
        await self._probe()
        gate = self._gate
        if not gate.try_acquire():
            await gate.acquire()
        try:
            async with self._session.get(self.env.me_url, headers=self._headers) as resp:
                json.loads(await resp.read())
                return resp.status
        finally:
            gate.release()
