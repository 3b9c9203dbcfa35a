"""A scripted stand-in for the auth endpoints, for state-machine tests of the TokenManager.

Every token-endpoint call becomes a :class:`Call` that the test answers (or leaves pending)
when it chooses, so interleavings (a refresh in flight while callers arrive, a caller
cancelled mid-refresh, an answer lost after rotation) are exact rather than timed.
Integration tests use the real fake server instead; this is for the cases in between.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from apimw_async import FakeClock, TokenManager
from apimw_async._auth_api import TokenGrant
from apimw_async._models import Credentials

CREDENTIALS = Credentials("ak_test_scripted0123", "sk_test_scripted_secret_value")


class Call:
    def __init__(self, kind: str, arg: str | None, sent_at: float, sent_at_wall: float) -> None:
        self.kind = kind
        self.arg = arg
        self.sent_at = sent_at
        self.sent_at_wall = sent_at_wall
        self.future: asyncio.Future[TokenGrant] = asyncio.get_running_loop().create_future()

    def succeed(
        self,
        access_token: str,
        *,
        expires_in: float = 100.0,
        refresh_token: str | None = "auto",
        token_type: str = "Bearer",
    ) -> None:
        if refresh_token == "auto":
            refresh_token = "rt_" + access_token
        self.future.set_result(
            TokenGrant(
                access_token=access_token,
                token_type=token_type,
                expires_in=expires_in,
                refresh_token=refresh_token,
                sent_at=self.sent_at,
                sent_at_wall=self.sent_at_wall,
            )
        )

    def fail(self, error: BaseException) -> None:
        self.future.set_exception(error)

    def __repr__(self) -> str:
        return f"Call({self.kind}, {self.arg})"


class ScriptedAuth:
    """Replaces ``TokenManager._api``; see the module docstring."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self._seen = 0
        self._arrived = asyncio.Event()
        self.auto: dict[str, Any] | None = None
        self._counter = itertools.count(1)

    def answer_automatically(self, **grant: Any) -> None:
        """From now on, succeed every call at once with a new token (``grant`` as for succeed)."""
        self.auto = grant

    async def request_token(self, credentials: Credentials, *, timeout: float) -> TokenGrant:
        assert credentials == CREDENTIALS
        return await self._call("token", None)

    async def refresh(self, refresh_token: str, *, timeout: float) -> TokenGrant:
        return await self._call("refresh", refresh_token)

    async def revoke(self, header: str, access_token: str, *, field: str, timeout: float) -> bool:
        call = Call("revoke", access_token, self.clock.monotonic(), self.clock.time())
        self.calls.append(call)
        self._arrived.set()
        return True

    async def _call(self, kind: str, arg: str | None) -> TokenGrant:
        call = Call(kind, arg, self.clock.monotonic(), self.clock.time())
        self.calls.append(call)
        self._arrived.set()
        if self.auto is not None:
            call.succeed(f"at{next(self._counter)}", **self.auto)
        return await call.future

    async def next_call(self) -> Call:
        """The next call not yet returned by ``next_call`` (waits for it to arrive)."""
        while self._seen >= len(self.calls):
            self._arrived.clear()
            await self._arrived.wait()
        self._seen += 1
        return self.calls[self._seen - 1]

    def kinds(self) -> list[str]:
        return [c.kind for c in self.calls]


def scripted_manager(clock: FakeClock, **options: Any) -> tuple[TokenManager, ScriptedAuth]:
    options.setdefault("base_url", "https://api.example.test/v1")
    tm = TokenManager(CREDENTIALS, clock=clock, **options)
    auth = ScriptedAuth(clock)
    tm._api = auth  # type: ignore[assignment]
    return tm, auth


async def settle() -> None:
    """Let every ready callback run (a few loop turns; no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)
