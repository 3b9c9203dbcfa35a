"""Fleet coordination: how one token manager shares its token pair through a :class:`TokenStore`.

The :class:`~apimw_async.TokenManager` is the state machine of one process; with a store it
asks :class:`Fleet` for each new token, which follows the store protocol::

    load the pair ── usable (not refused here, not revoked, not expired)? ──► adopt it
        │ no
    take the lease ── another process holds it ──► wait for its pair (WARNINGs while it lasts),
        │ ours                                    then load again; a dead holder's lease
        │ (renewed while held)                    expires within one lease length
    load again ── usable now? ──► adopt it
        │ no
    mark the stored refresh token spent, call the token endpoint (through the manager),
    save the new pair (compare-and-set), release the lease

The lease is as long as the manager's ``lease_ttl`` allows but at most a quarter of the token
lifetime (at least :data:`STORE_MIN_LEASE_TTL`), so a holder killed mid-refresh stalls a fleet
of 2-second tokens for about a second, not eight; a holder that works longer (a refused
refresh, then the credentials) renews it every third of its length.

A store that cannot be reached makes :meth:`Fleet.obtain` return ``None``: the manager then
works alone, with the credentials only, and the store is tried again after
:data:`STORE_RETRY_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import attrs

from .._auth_api import TokenGrant
from .._clock import Clock
from .._config import (
    LOGGER_NAME,
    STORE_CLOCK_SKEW,
    STORE_LEASE_LIFETIME_FRACTION,
    STORE_MIN_LEASE_TTL,
    STORE_POLL_INTERVAL,
    STORE_RETRY_INTERVAL,
    STORE_WAIT_WARNING,
)
from .._errors import StoreUnavailableError, TokenUnavailableError
from .._models import Token
from . import StoredToken, TokenStore

__all__ = ["Fleet", "FleetMember"]

log = logging.getLogger(f"{LOGGER_NAME}.tokens")


class FleetStats(Protocol):
    adopted: int
    store_outages: int


class FleetMember(Protocol):
    """What a :class:`Fleet` needs from its token manager."""

    @property
    def stats(self) -> FleetStats: ...

    @property
    def token(self) -> Token | None: ...

    def make_token(
        self,
        access_token: str,
        token_type: str,
        expires_in: float,
        refresh_token: str | None,
        *,
        sent_at: float,
        sent_at_wall: float,
    ) -> Token:
        """A token whose deadlines count from ``sent_at`` (monotonic), by the refresh policy."""

    def adopt(self, token: Token) -> None:
        """Make ``token`` (another process's) this process's current token."""

    def defer_background_refresh(self, until: float) -> None:
        """No background refresh before ``until`` (monotonic)."""

    def forget(self, token: Token) -> None:
        """Drop ``token`` (and the refresh token held with it): it was revoked elsewhere."""

    def hand_over_refresh_token(self, value: str | None, issued_at_wall: float) -> object:
        """Put a refresh token from the store in the manager's slot; a handle for
        :meth:`refresh_token_unsent`."""

    def refresh_token_unsent(self, handle: object) -> bool:
        """Whether the server certainly never saw the refresh token handed over."""

    async def call_token_endpoint(self, deadline: float) -> TokenGrant:
        """One token-endpoint call: the slot's refresh token, else the credentials."""

    def commit(self, grant: TokenGrant, *, shared: bool) -> Token:
        """Make a new grant the current token."""


class Fleet:
    """The store side of one token manager (see the module docstring).

    ``key`` names the pair in the store; ``lease_ttl`` is the longest lease taken.
    """

    def __init__(
        self,
        store: TokenStore,
        key: str,
        member: FleetMember,
        *,
        clock: Clock,
        lease_ttl: float,
    ) -> None:
        self.store = store
        self.key = key
        self._member = member
        self._clock = clock
        self._max_lease = lease_ttl
        self._down_until = float("-inf")
        #: An access token the server refused here: never adopted again from the store.
        self._rejected: str | None = None
        self._lifetime: float | None = None

    # --- what the manager asks ---------------------------------------------------------------

    def lease_ttl(self) -> float:
        """The lease length for the token lifetime last seen (scaled down for short tokens)."""
        token = self._member.token
        lifetime = token.expires_in if token is not None else self._lifetime
        if lifetime is None:
            return self._max_lease
        return min(
            self._max_lease, max(STORE_MIN_LEASE_TTL, lifetime * STORE_LEASE_LIFETIME_FRACTION)
        )

    def reject(self, access_token: str) -> None:
        """The server refused ``access_token``: never adopt it again."""
        self._rejected = access_token

    async def obtain(self, deadline: float, background: bool) -> Token | None:
        """A token through the store: adopted, or refreshed here under the lease.

        ``None`` when the store cannot be reached (the manager then works alone). Raises
        :class:`TokenUnavailableError` when another process held the lease past ``deadline``
        and the token endpoint's errors from a refresh made here.
        """
        if self._clock.monotonic() < self._down_until:
            return None
        try:
            token = await self._obtain(deadline, background)
        except StoreUnavailableError as exc:
            self._unavailable(exc)
            return None
        if self._down_until != float("-inf"):
            self._down_until = float("-inf")
            log.warning("token store reachable again; sharing tokens again")
        return token

    async def revoke(self, access_token: str) -> None:
        """Mark the stored pair revoked if it is ``access_token``'s: no process adopts it or
        sends its refresh token again, and those holding it drop it at their next check."""
        self.reject(access_token)
        try:
            for _ in range(3):  # lost compare-and-sets: someone saved meanwhile, look again
                stored = await self.store.load(self.key)
                if stored is None or stored.access_token != access_token or stored.revoked:
                    return
                if await self.store.save(
                    self.key, stored.revoked_copy(), expected_version=stored.version
                ):
                    return
        except StoreUnavailableError as exc:
            log.warning(
                "token store unavailable (%s); other processes learn of the revocation from "
                "the server's 401",
                exc,
            )

    async def check(self, token: Token) -> None:
        """Look at the store while ``token`` is fresh: drop it if another process revoked it,
        take the fleet's pair if it is newer (after a revocation, a new pair replaces the
        revoked one). Store faults are ignored here: the next acquisition reports them."""
        try:
            stored = await self.store.load(self.key)
        except StoreUnavailableError:
            return
        if stored is None or self._member.token is not token:
            return
        if stored.revoked and stored.access_token == token.access_token:
            self.reject(token.access_token)
            self._member.forget(token)
            log.info("access token %s was revoked by another process", token.fingerprint)
            return
        self._adopt(stored)

    # --- the protocol ------------------------------------------------------------------------

    def _unavailable(self, exc: StoreUnavailableError) -> None:
        if self._down_until == float("-inf"):
            self._member.stats.store_outages += 1
            log.warning(
                "token store unavailable (%s); working locally with the credentials, "
                "retrying the store in %gs",
                exc,
                STORE_RETRY_INTERVAL,
            )
        self._down_until = self._clock.monotonic() + STORE_RETRY_INTERVAL

    async def _obtain(self, deadline: float, background: bool) -> Token:
        store, key, clock = self.store, self.key, self._clock
        waiting_since: float | None = None
        next_warning = float("inf")
        while True:
            stored = await store.load(key)
            adopted = self._adopt(stored)
            now = clock.monotonic()
            if adopted is not None and not adopted.needs_refresh(now):
                return adopted
            ttl = self.lease_ttl()
            owner = await store.acquire_lease(key, ttl)
            if owner is not None:
                async with self._renewed(owner, ttl):
                    token = await self._refresh_under_lease(deadline)
                if token is not None:
                    return token
                continue
            # Another process is refreshing: wait for its pair, not the token endpoint.
            current = self._member.token
            if background and current is not None and not current.is_expired(now):
                self._member.defer_background_refresh(now + STORE_POLL_INTERVAL)
                return current
            if now >= deadline:
                raise TokenUnavailableError(
                    "another process holds the refresh lease and published no token "
                    "within the deadline"
                )
            warn_every = min(STORE_WAIT_WARNING, ttl / 2)
            if waiting_since is None:
                waiting_since, next_warning = now, now + warn_every
            elif now >= next_warning:
                log.warning(
                    "no token for %.1fs: waiting for another process to publish one (it holds "
                    "the refresh lease; if it died, its lease lapses on its own)",
                    now - waiting_since,
                )
                next_warning = now + warn_every
            timeout = min(deadline - now, ttl, next_warning - now)
            await store.wait_for_update(key, stored.version if stored else 0, timeout)

    @contextlib.asynccontextmanager
    async def _renewed(self, owner: str, ttl: float) -> AsyncIterator[None]:
        """Hold the lease: renew it every third of ``ttl`` until the block ends, then release."""
        # Renewed on the event loop's time, not the manager's clock: the lease lives in the
        # store's time (real time for Redis), and a test's fake clock must not be driven by it.
        renewer = asyncio.get_running_loop().create_task(
            self._renew(owner, ttl), name="apimw-lease-renewal"
        )
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            with contextlib.suppress(StoreUnavailableError):
                await self.store.release_lease(self.key, owner)

    async def _renew(self, owner: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await self.store.renew_lease(self.key, owner, ttl)
            except StoreUnavailableError as exc:
                log.warning("could not renew the refresh lease (%s); will try again", exc)
                continue
            if not held:
                # Compare-and-set still fences the save: only the lapse is lost.
                log.warning(
                    "the refresh lease lapsed while refreshing; another process may refresh too"
                )
                return

    async def _refresh_under_lease(self, deadline: float) -> Token | None:
        """Holding the lease: refresh, save with compare-and-set; ``None`` to start over."""
        store, key, member = self.store, self.key, self._member
        stored = await store.load(key)
        adopted = self._adopt(stored)
        if adopted is not None and not adopted.needs_refresh(self._clock.monotonic()):
            return adopted
        version = stored.version if stored else 0
        handle: object = None
        if stored is not None and stored.refresh_token is not None:
            # Spend it in the store before sending it: a holder that dies mid-refresh must not
            # leave it behind for the next holder to send again.
            spent = stored.spent()
            if not await store.save(key, spent, expected_version=version):
                return None
            version = spent.version
            handle = member.hand_over_refresh_token(stored.refresh_token, stored.refresh_issued_at)
        else:
            member.hand_over_refresh_token(None, 0.0)
        try:
            grant = await member.call_token_endpoint(deadline)
        except BaseException:
            if handle is not None and stored is not None and member.refresh_token_unsent(handle):
                # The server never saw it (refused connection, 429): give it back to the fleet.
                with contextlib.suppress(StoreUnavailableError):
                    await store.save(
                        key, attrs.evolve(stored, version=version + 1), expected_version=version
                    )
            raise
        token = member.commit(grant, shared=True)
        new = StoredToken(
            access_token=grant.access_token,
            token_type=grant.token_type,
            expires_in=grant.expires_in,
            refresh_token=grant.refresh_token,
            issued_at=grant.sent_at_wall,
            refresh_issued_at=grant.sent_at_wall,
            version=version + 1,
        )
        try:
            if not await store.save(key, new, expected_version=version):
                log.warning("a newer token pair was stored meanwhile; ours is used locally only")
        except StoreUnavailableError as exc:
            # The new pair is committed here already; only sharing it failed.
            self._unavailable(exc)
        return token

    def _adopt(self, stored: StoredToken | None) -> Token | None:
        """Take a stored pair (another process's) as this process's token, if usable."""
        if stored is None:
            return None
        self._lifetime = stored.expires_in
        if stored.revoked or stored.access_token == self._rejected:
            return None
        member = self._member
        current = member.token
        if current is not None and current.access_token == stored.access_token:
            return current
        if current is not None and current.issued_at >= stored.issued_at:
            return None
        now_mono = self._clock.monotonic()
        # Another machine's wall clock wrote issued_at: assume it a little later than ours.
        skew = min(STORE_CLOCK_SKEW, stored.expires_in * 0.05)
        age = max(0.0, self._clock.time() - stored.issued_at + skew)
        token = member.make_token(
            stored.access_token,
            stored.token_type,
            stored.expires_in,
            stored.refresh_token,
            sent_at=now_mono - age,
            sent_at_wall=stored.issued_at,
        )
        if token.is_expired(now_mono):
            return None
        member.adopt(token)
        return token
