"""Hand-rolled token code: the ``naive`` and ``naive+lock`` strategies.

Both use :class:`TokenSource`, the token-endpoint code a competent developer writes from the
APIMW docs: a refresh with the single-use refresh token when one is held (the rotated one is
stored), ``POST auth/token`` with the credentials otherwise, and back to the credentials when a
refresh is refused with ``INVALID_REFRESH_TOKEN`` (the docs' "authenticate again"). No retries:
a failed token call fails the request that made it. The token is renewed synchronously, in the
request path, once less than :func:`~benchmarks.strategies.base.refresh_skew` of it remains.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs

from .base import Env, Probe, Strategy

__all__ = ["NaiveLockStrategy", "NaiveStrategy", "TokenEndpointError", "TokenSource"]


class TokenEndpointError(Exception):
    """A token-endpoint call that did not return a token."""

    def __init__(self, status: int, code: str | None) -> None:
        super().__init__(f"HTTP {status} {code or ''}".strip())
        self.status = status
        self.code = code


@attrs.frozen
class Grant:
    access_token: str
    expires_in: float
    #: ``time.monotonic()`` just before the request was sent.
    sent_at: float
    #: ``time.time()`` at the same moment.
    sent_at_wall: float


class TokenSource:
    """Gets a new access token from APIMW (refresh token first, credentials as fallback)."""

    def __init__(self, env: Env, session: aiohttp.ClientSession, probe: Probe) -> None:
        self._env = env
        self._session = session
        self._probe = probe
        self._refresh_token: str | None = None

    async def fetch(self) -> Grant:
        if self._refresh_token is not None:
            try:
                return await self._call("refresh", {"refresh_token": self._refresh_token})
            except TokenEndpointError as exc:
                if exc.code != "INVALID_REFRESH_TOKEN":
                    raise
                self._refresh_token = None
        creds = self._env.credentials
        return await self._call("token", {"api_key": creds.api_key, "api_secret": creds.api_secret})

    async def _call(self, endpoint: str, body: dict[str, str]) -> Grant:
        sent_at = self._probe.call_started()
        sent_at_wall = time.time()
        expires_in: float | None = None
        try:
            async with self._session.post(
                f"{self._env.base_url}/auth/{endpoint}", json=body
            ) as resp:
                payload: Any = json.loads(await resp.read())
                if resp.status != 200 or not payload.get("success"):
                    error = payload.get("error") or {}
                    raise TokenEndpointError(resp.status, error.get("code"))
            data = payload["data"]
            expires_in = float(data["expires_in"])
            self._refresh_token = data.get("refresh_token")
            return Grant(data["access_token"], expires_in, sent_at, sent_at_wall)
        finally:
            self._probe.call_finished(sent_at, expires_in)


class _HandRolled(Strategy):
    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._session: aiohttp.ClientSession | None = None
        self._source: TokenSource | None = None
        self._header: str | None = None
        self._renew_at = float("-inf")

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.env.connections),
            timeout=aiohttp.ClientTimeout(total=self.env.timeout),
        )
        self._source = TokenSource(self.env, self._session, self.probe)

    async def _renew(self) -> None:
        assert self._source is not None
        grant = await self._source.fetch()
        self._header = f"Bearer {grant.access_token}"
        self._renew_at = grant.sent_at + grant.expires_in - self.env.skew

    async def header(self) -> str:
        raise NotImplementedError

    async def request(self) -> int:
        assert self._session is not None
        if self.env.instrument:
            header = await self.probe.measure(self.header)
        else:
            header = await self.header()
        async with self._session.get(self.env.me_url, headers={"Authorization": header}) as resp:
            json.loads(await resp.read())
            return resp.status

    def token_path(self) -> Callable[[], Awaitable[Any]]:
        return self.header

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class NaiveStrategy(_HandRolled):
    """Expiry check, no lock: every caller that finds the token due renews it."""

    name = "naive"

    async def header(self) -> str:
        if self._header is None or time.monotonic() >= self._renew_at:
            await self._renew()
        assert self._header is not None
        return self._header


class NaiveLockStrategy(_HandRolled):
    """Double-checked ``asyncio.Lock``: one caller renews, the others queue on the lock."""

    name = "naive+lock"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._lock = asyncio.Lock()

    async def header(self) -> str:
        if self._header is None or time.monotonic() >= self._renew_at:
            async with self._lock:
                if self._header is None or time.monotonic() >= self._renew_at:
                    await self._renew()
        assert self._header is not None
        return self._header
