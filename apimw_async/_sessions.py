"""aiohttp sessions: the user's, or one owned per event loop (see :mod:`._loops`)."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp

from ._errors import ClientClosedError
from ._loops import PerLoop, release_transport

__all__ = ["SessionProvider"]


class SessionProvider:
    """The aiohttp session for the running loop: the user's, or one owned per event loop.

    A user-owned session is used as it is and never closed. Otherwise a session is created
    lazily inside each running loop (aiohttp sessions are loop-bound) and closed by
    :meth:`aclose` or, failing that, when the loop shuts down. A loop closed without shutting
    down (``new_event_loop()`` ... ``close()``) has its session's sockets released when the next
    loop makes one; a forked child never touches the parent's sessions.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
        connector_limit: int = 100,
    ) -> None:
        self._user_session = session
        self._timeout = timeout
        self._limit = connector_limit
        self._owned: PerLoop[aiohttp.ClientSession] = PerLoop(
            self._create, close=_close, abandon=_abandon
        )
        self._closed = False

    @property
    def owns_session(self) -> bool:
        """Whether sessions are created (and closed) here rather than borrowed."""
        return self._user_session is None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loops(self) -> int:
        """How many event loops hold an owned session now."""
        return len(self._owned)

    def get(self) -> aiohttp.ClientSession:
        """The session to use in the running event loop (created on first use)."""
        if self._closed:
            raise ClientClosedError("this client was closed")
        if self._user_session is not None:
            if self._user_session.closed:
                raise ClientClosedError("the aiohttp session passed in was closed by its owner")
            return self._user_session
        return self._owned.get()

    def _create(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=self._timeout or aiohttp.ClientTimeout(),
            connector=aiohttp.TCPConnector(limit=self._limit),
        )

    async def aclose(self) -> None:
        """Close the owned session of the running loop (those of loops still running in other
        threads close when their loop shuts down)."""
        self._closed = True
        if self._user_session is None:
            await self._owned.aclose()


async def _close(session: aiohttp.ClientSession) -> None:
    if not session.closed:
        await session.close()


def _abandon(session: aiohttp.ClientSession) -> None:
    """Release a session whose loop was closed without closing it (no await possible)."""
    connector: Any = session.connector
    if connector is None or connector.closed:
        return
    # Idle pooled connections hold a socket each: close them now rather than when the garbage
    # collector finds their transports (with a ResourceWarning, maybe much later).
    conns: dict[Any, Any] = getattr(connector, "_conns", {})
    for idle in list(conns.values()):
        for proto, _ in idle:
            release_transport(getattr(proto, "transport", None))
    conns.clear()
    # Marks the connector closed (it returns early for a closed loop), so that neither it nor
    # the session warns "unclosed" when collected.
    with contextlib.suppress(Exception):
        connector._close()
