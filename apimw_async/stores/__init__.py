"""Token stores: where a token pair lives when several processes share one API key.

A :class:`TokenManager` without a store keeps its pair in memory and coordinates the tasks of
its own process. With a shared store (:class:`apimw_async.stores.redis.RedisTokenStore`), the
processes of a fleet coordinate through it:

- the pair is stored with its wall-clock issue time and a ``version`` bumped by every save;
  :meth:`TokenStore.save` is a compare-and-set on that version, so nobody overwrites a newer
  pair with an older one (fencing);
- refreshing takes a lease (:meth:`TokenStore.acquire_lease`) that only its owner releases and
  that expires on its own if the owner dies; the others wait for the new pair
  (:meth:`TokenStore.wait_for_update`) instead of calling the token endpoint;
- before the lease holder sends a refresh token it saves the pair with the refresh token
  removed, so a holder that dies mid-refresh never leaves a spent refresh token behind for the
  next one to reuse.

Stores raise :class:`~apimw_async.StoreUnavailableError` when they cannot be reached; the
manager then degrades to local work (credentials only, so no refresh token can be reused) and
goes back to the store once it answers again.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import weakref
from typing import Any, Protocol, runtime_checkable

import attrs

from .._clock import SYSTEM_CLOCK, Clock
from .._errors import MalformedResponseError
from .._models import header_safe

__all__ = ["MemoryTokenStore", "StoredToken", "TokenStore"]

_FORMAT = 1


@attrs.frozen(repr=False)
class StoredToken:
    """A token pair as kept in a store: wall-clock times, so any process can judge it.

    ``issued_at`` is when the token request was sent (epoch seconds); the access token expires
    ``expires_in`` seconds later. ``refresh_token`` is ``None`` once it was spent (or never
    given). ``version`` is 1 for the first pair saved under a key and grows by one per save.
    ``revoked`` marks a pair revoked by :meth:`TokenManager.revoke`: nobody adopts it.
    """

    access_token: str
    token_type: str
    expires_in: float
    refresh_token: str | None
    issued_at: float
    refresh_issued_at: float
    version: int
    revoked: bool = False

    @property
    def expires_at(self) -> float:
        """Wall-clock expiry (epoch seconds) as the server sees it."""
        return self.issued_at + self.expires_in

    def to_json(self) -> bytes:
        """Serialised form (a secret: encrypt it at rest if the store is not trusted)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "access_token": self.access_token,
                "token_type": self.token_type,
                "expires_in": self.expires_in,
                "refresh_token": self.refresh_token,
                "issued_at": self.issued_at,
                "refresh_issued_at": self.refresh_issued_at,
                "version": self.version,
                "revoked": self.revoked,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredToken:
        """Parse :meth:`to_json` output; :class:`MalformedResponseError` if it does not fit."""
        try:
            data: Any = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError("unknown format")
            refresh = data["refresh_token"]
            revoked = data.get("revoked", False)
            if not isinstance(revoked, bool):
                raise TypeError("revoked is not a boolean")
            token = cls(
                access_token=_header_value(data["access_token"]),
                token_type=_header_value(data["token_type"]),
                expires_in=_float(data["expires_in"]),
                refresh_token=None if refresh is None else _str(refresh),
                issued_at=_float(data["issued_at"]),
                refresh_issued_at=_float(data["refresh_issued_at"]),
                version=int(data["version"]),
                revoked=revoked,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            # Not raised in here: the decoder's error (the implicit __context__) holds the
            # document, tokens included; nor is its text kept.
            problem = f"missing field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        else:
            return token
        raise MalformedResponseError(f"stored token is unreadable ({problem})")

    def spent(self) -> StoredToken:
        """The same pair with the refresh token removed, as the next version."""
        return attrs.evolve(self, refresh_token=None, version=self.version + 1)

    def revoked_copy(self) -> StoredToken:
        """The same pair marked revoked, without its refresh token, as the next version."""
        return attrs.evolve(self, refresh_token=None, revoked=True, version=self.version + 1)

    def __repr__(self) -> str:
        return (
            f"StoredToken(version={self.version}, revoked={self.revoked}, "
            f"expires_in={self.expires_in!r}, "
            f"issued_at={self.issued_at!r}, refresh_token={'***' if self.refresh_token else None})"
        )


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a non-empty string")
    return value


def _header_value(value: Any) -> str:
    # A value that cannot go into a header would break every request for its whole life.
    if not isinstance(value, str) or not header_safe(value):
        raise TypeError("expected a header-safe string")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected a number")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


@runtime_checkable
class TokenStore(Protocol):
    """A place several token managers (processes) share token pairs and a refresh lease.

    ``key`` identifies one API key at one base URL (a hash; never the key itself). All
    methods raise :class:`~apimw_async.StoreUnavailableError` when the store cannot be
    reached, and nothing else on purpose.
    """

    async def load(self, key: str) -> StoredToken | None:
        """The stored pair, or ``None``."""

    async def save(self, key: str, token: StoredToken, *, expected_version: int) -> bool:
        """Store ``token`` if the stored version is ``expected_version`` (0: none stored).

        ``token.version`` must be ``expected_version + 1``. Returns ``False`` (and stores
        nothing) if another writer got there first.
        """

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        """Take the refresh lease for ``ttl`` seconds; its owner id, or ``None`` if taken."""

    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend a lease still held by ``owner``; ``False`` if it was lost."""

    async def release_lease(self, key: str, owner: str) -> None:
        """Release the lease if ``owner`` still holds it (never someone else's)."""

    async def wait_for_update(self, key: str, version: int, timeout: float) -> None:
        """Return when the stored version may differ from ``version``, when nobody holds the
        lease any more (released, or expired with a dead holder), or after ``timeout``."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryTokenStore:
    """A :class:`TokenStore` in this process's memory.

    Useful to share one pair between several token managers of one process (and in tests, to
    play a fleet of processes inside one). Leases expire on ``clock`` (inject the tests'
    :class:`~apimw_async.FakeClock`). Use it from one event loop. A forked child gets a copy
    that shares nothing with the parent: its refresh tokens are dropped there (the parent may
    spend them) and its leases released.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SYSTEM_CLOCK
        self._tokens: dict[str, StoredToken] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self.saves = 0
        self.lease_grants = 0
        _MEMORY_STORES.add(self)

    def _after_fork_in_child(self) -> None:
        self._tokens = {key: attrs.evolve(t, refresh_token=None) for key, t in self._tokens.items()}
        self._leases = {}
        self._changed = {}

    def _now(self) -> float:
        return self._clock.monotonic()

    async def load(self, key: str) -> StoredToken | None:
        return self._tokens.get(key)

    async def save(self, key: str, token: StoredToken, *, expected_version: int) -> bool:
        current = self._tokens.get(key)
        if (current.version if current else 0) != expected_version:
            return False
        if token.version != expected_version + 1:
            raise ValueError("a saved token's version must be expected_version + 1")
        self._tokens[key] = token
        self.saves += 1
        self._wake(key)
        return True

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        held = self._leases.get(key)
        if held is not None and held[1] > self._now():
            return None
        owner = secrets.token_hex(8)
        self._leases[key] = (owner, self._now() + ttl)
        self.lease_grants += 1
        return owner

    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        held = self._leases.get(key)
        if held is None or held[0] != owner or held[1] <= self._now():
            return False
        self._leases[key] = (owner, self._now() + ttl)
        return True

    async def release_lease(self, key: str, owner: str) -> None:
        held = self._leases.get(key)
        if held is not None and held[0] == owner:
            del self._leases[key]
            self._wake(key)

    def _wake(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    async def wait_for_update(self, key: str, version: int, timeout: float) -> None:
        current = self._tokens.get(key)
        if (current.version if current else 0) != version:
            return
        held = self._leases.get(key)
        if held is None or held[1] <= self._now():
            # Nobody is refreshing (released, or the holder died): the caller may take over.
            return
        event = self._changed.setdefault(key, asyncio.Event())
        waiters = [
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self._clock.sleep(timeout)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def aclose(self) -> None:
        self._changed.clear()

    def __repr__(self) -> str:
        return f"MemoryTokenStore(keys={len(self._tokens)})"


_MEMORY_STORES: weakref.WeakSet[MemoryTokenStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_MEMORY_STORES):
        store._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
