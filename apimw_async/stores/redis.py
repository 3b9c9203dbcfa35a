"""A :class:`~apimw_async.stores.TokenStore` on Redis, for a fleet of processes or hosts.

One API key's token pair lives in one Redis hash, the refresh lease in one string::

    {prefix}:{<key>}:token     hash  v = version, d = StoredToken.to_json() (encrypted if asked)
    {prefix}:{<key>}:lease     string  owner id, SET NX PX (expires on its own)
    {prefix}:{<key>}:updated   pub/sub channel: a message per save, release or discard

``key`` is what the token manager passes: a hash of the base URL and API key, never the key
itself. It is the keys' hash tag (in braces), so on a Redis Cluster one API key's entries
(and those of :class:`RedisRateLimiter`) share one slot and every script touches one slot.
Every write that must be atomic is one Lua script (compare-and-set of the version,
owner-checked renew and release), so a slow or resumed writer can never overwrite a newer
pair with an older one (fencing), nor release a lease it lost.

Waiting for another process's refresh (:meth:`RedisTokenStore.wait_for_update`) listens on
one pub/sub connection per event loop, shared by every waiter of that loop, and re-reads the
version on each message; a bounded poll backs it up (pub/sub is at-most-once). Without
notifications (``notifications=False``) it polls every ``poll_interval`` seconds.

redis-py clients are bound to the event loop that made their connections: the store keeps
one client per running loop (so it works under repeated :func:`asyncio.run`), closes it when
that loop shuts down, and forgets the parent's clients in a forked child. Every Redis or
socket failure becomes :class:`~apimw_async.StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

try:
    import redis.asyncio as aioredis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "apimw_async.stores.redis needs redis-py: pip install 'apimw-async[redis]'"
    ) from exc

from .._clock import SYSTEM_CLOCK, Clock
from .._config import LOGGER_NAME, REFRESH_TOKEN_LIFETIME, seconds
from .._errors import ConfigurationError, StoreUnavailableError
from .._loops import PerLoop, abandon_task
from . import StoredToken
from ._redis_base import (
    REDIS_ERRORS,
    as_text,
    bind,
    check_key,
    check_prefix,
    check_url,
    close_client,
    close_quietly,
    connection_options,
    describe_url,
    drop_connections,
    new_client,
    pool_connections,
    unavailable,
    writer_transport,
)
from ._redis_base import ms as _ms
from ._redis_limiter import LimiterStats, RedisRateLimiter

__all__ = ["Cipher", "LimiterStats", "RedisRateLimiter", "RedisTokenStore"]

log = logging.getLogger(f"{LOGGER_NAME}.stores.redis")

#: Lease length when the caller passes none (the token manager passes its own).
DEFAULT_LEASE_TTL: Final = 8.0
#: Socket timeouts: an outage must be noticed in about a second, not redis-py's 5 s.
DEFAULT_SOCKET_TIMEOUT: Final = 1.0
DEFAULT_CONNECT_TIMEOUT: Final = 1.0
#: Connections per event loop (a token manager needs one or two at a time; a burst waits).
DEFAULT_MAX_CONNECTIONS: Final = 16
#: Poll interval of :meth:`RedisTokenStore.wait_for_update` without pub/sub.
DEFAULT_POLL_INTERVAL: Final = 0.05
#: With pub/sub working, the version (and lease) is still re-read this often: a lease that
#: expired (its holder died) sends no message, and pub/sub drops messages on reconnects.
SAFETY_POLL_INTERVAL: Final = 0.5
#: A waiter waits at most this long for the shared subscription before it polls instead.
SUBSCRIBE_WAIT: Final = 0.5
#: A listener with no waiters closes its connection after this long.
LISTENER_IDLE: Final = 30.0
#: After a listener failed, it is not restarted for this long (waiters poll meanwhile).
LISTENER_RETRY: Final = 1.0
#: A stored pair outlives its refresh token (or, without one, its access token) by this much,
#: and any pair is kept at least this long (a spent marker must outlast the refresh it fences).
KEY_TTL_GRACE: Final = 600.0

_MESSAGE_TIMEOUT: Final = 1.0
_GLOB_SPECIALS: Final = frozenset("*?[]\\")

# KEYS[1] token hash; ARGV: expected version, new version, value, ttl ms, channel.
# An absent hash has version "0". Versions are decimal strings written only here.
_SAVE: Final = """
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[2])
return 1
"""

# KEYS[1] token hash; ARGV: the unreadable value, channel. Deletes it only if unchanged.
_DISCARD: Final = """
if redis.call('HGET', KEYS[1], 'd') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '0')
  return 1
end
return 0
"""

# KEYS[1] token hash; ARGV: channel. A hash with a version but no pair (written by hand, or
# half-deleted) would fail every compare-and-set: deleted if it still has no pair.
_DISCARD_EMPTY: Final = """
if redis.call('HEXISTS', KEYS[1], 'd') == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[1], '0')
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV: owner, ttl ms.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lease; ARGV: owner, channel. Waiters wake: the holder may have given up.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"""


@runtime_checkable
class Cipher(Protocol):
    """Encrypts stored pairs at rest: :class:`cryptography.fernet.Fernet`, ``MultiFernet``,
    or anything with these two methods. ``decrypt`` raises on a value it cannot read."""

    def encrypt(self, data: bytes, /) -> bytes: ...

    def decrypt(self, token: bytes, /) -> bytes: ...


ClientFactory = Callable[[], "aioredis.Redis"]


def _unavailable(what: str) -> contextlib.AbstractContextManager[None]:
    """Turn any Redis or socket failure into :class:`StoreUnavailableError`."""
    return unavailable("redis token store", what)


def _make_cipher(encryption_key: str | bytes | Sequence[str | bytes]) -> Cipher:
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "encryption_key needs the cryptography package: pip install cryptography"
        ) from exc
    keys = [encryption_key] if isinstance(encryption_key, (str, bytes)) else list(encryption_key)
    if not keys:
        raise ConfigurationError("encryption_key must not be empty")
    try:
        fernets = [Fernet(key) for key in keys]
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            "encryption_key must be a Fernet key (Fernet.generate_key()) or a list of them"
        ) from exc
    return fernets[0] if len(fernets) == 1 else MultiFernet(fernets)


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class _Listener:
    """One pub/sub subscription per event loop, shared by every waiter of that loop."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        escaped = "".join(f"\\{c}" if c in _GLOB_SPECIALS else c for c in prefix)
        self._pattern = f"{escaped}:*:updated"
        self._head = len(prefix) + 2  # "prefix:{"
        self._tail = len("}:updated")
        self._events: dict[str, set[asyncio.Event]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._loop = asyncio.get_running_loop()
        self._retry_at = float("-inf")
        self._idle_since = self._loop.time()
        #: Messages received (for tests and measurements).
        self.messages = 0

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def watch(self, key: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        if self._task is None and self._loop.time() >= self._retry_at:
            self._task = self._loop.create_task(self._run(), name="apimw-redis-listener")
        return event

    def unwatch(self, key: str, event: asyncio.Event) -> None:
        events = self._events.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[key]
        if not self._events:
            self._idle_since = self._loop.time()

    async def wait_subscribed(self, timeout: float) -> None:
        if self._subscribed.is_set() or self._task is None or timeout <= 0:
            return
        waiter = self._loop.create_task(self._subscribed.wait())
        try:
            await asyncio.wait(
                (waiter, self._task), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()

    def _wake(self, key: str | None) -> None:
        groups = list(self._events.values()) if key is None else [self._events.get(key, set())]
        for events in groups:
            for event in events:
                event.set()

    async def _run(self) -> None:
        pubsub = self._pubsub = self._client.pubsub()
        try:
            await pubsub.psubscribe(self._pattern)
            while True:
                message = await pubsub.get_message(timeout=_MESSAGE_TIMEOUT)
                if message is None:
                    if not self._events and self._loop.time() - self._idle_since > LISTENER_IDLE:
                        return
                    continue
                kind = as_text(message.get("type"))
                if kind == "psubscribe":
                    self._subscribed.set()
                elif kind == "pmessage":
                    self.messages += 1
                    channel = as_text(message.get("channel"))
                    self._wake(channel[self._head : -self._tail])
        except REDIS_ERRORS as exc:
            self._retry_at = self._loop.time() + LISTENER_RETRY
            log.debug("redis update listener stopped (%s); waiters poll", type(exc).__name__)
        except Exception:
            # Never let a bug here hurt the waiters: they fall back to polling.
            self._retry_at = self._loop.time() + LISTENER_RETRY
            log.warning("redis update listener failed; waiters poll", exc_info=True)
        finally:
            self._subscribed.clear()
            if self._task is asyncio.current_task():
                self._task = None
            self._wake(None)  # waiters re-read now and poll until a listener runs again
            await close_quietly(pubsub)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _LoopState:
    """The Redis client, scripts and listener of one event loop."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        notifications: bool,
        owns_pool: bool,
        owns_client: bool = True,
    ) -> None:
        self.client = client
        self.owns_pool = owns_pool
        self.owns_client = owns_client
        self.save = client.register_script(_SAVE)
        self.discard = client.register_script(_DISCARD)
        self.discard_empty = client.register_script(_DISCARD_EMPTY)
        self.renew = client.register_script(_RENEW)
        self.release = client.register_script(_RELEASE)
        self.listener = _Listener(client, prefix) if notifications else None
        self.probes: dict[str, asyncio.Task[tuple[int, bool]]] = {}

    def abandon(self) -> None:
        """Release what a closed loop left behind (no await possible): the listener's task,
        the probes in flight and the connections' sockets."""
        # A client you made is yours (and a RedisCluster has no single pool): only ours here.
        connections = pool_connections(self.client) if self.owns_client else []
        tasks: list[asyncio.Task[Any] | None] = list(self.probes.values())
        if self.listener is not None:
            tasks.append(self.listener._task)
            connections.append(getattr(self.listener._pubsub, "connection", None))
        # The transports first: closing a task's coroutine runs redis-py clean-up code that
        # forgets a connection's writer without being able to close it.
        transports = [writer_transport(c) for c in connections]
        for task in tasks:
            abandon_task(task)
        drop_connections(connections, transports)

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
        if not self.owns_client:
            return
        # A client_factory's pool is its maker's (it may serve other clients).
        await (close_client if self.owns_pool else close_quietly)(self.client)


class RedisTokenStore:
    """Token pairs and refresh leases shared through Redis (``redis.asyncio``).

    >>> store = RedisTokenStore.from_url("redis://localhost:6379/0")   # doctest: +SKIP
    >>> client = Client(credentials, store=store)                       # doctest: +SKIP

    Give one of ``url`` (``redis://``, ``rediss://`` or ``unix://``; extra keyword arguments go to
    :meth:`redis.asyncio.Redis.from_url`), ``client_factory``, a callable returning a new
    :class:`redis.asyncio.Redis` or ``RedisCluster`` (e.g. over your own ``ConnectionPool``, a
    Sentinel master, TLS settings; called once per event loop and process, and the store closes what
    it returns), or ``client``, one you made (``decode_responses`` off, the default) and close
    yourself: it is bound to the event loop and the process that first use it (redis-py connections
    belong to their loop), and using the store from another one raises
    :class:`~apimw_async.ConfigurationError` (pass ``client_factory`` for several loops or forked
    workers).

    ``prefix`` starts every Redis key. ``lease_ttl`` is the lease length when a caller passes
    none. ``cipher`` (anything with ``encrypt(bytes) -> bytes`` / ``decrypt(bytes) -> bytes``,
    e.g. Fernet or MultiFernet) or ``encryption_key`` (one Fernet key or a list, newest first;
    needs ``cryptography``) encrypts the stored pair; a value that does not decrypt or parse is
    treated as absent, logged, and discarded. ``notifications=False`` replaces pub/sub by
    polling every ``poll_interval`` seconds. Socket timeouts default to one second and a
    failed command is retried once on a new connection, so an outage surfaces as
    :class:`~apimw_async.StoreUnavailableError` within about two seconds. Each event loop
    gets a blocking pool of ``max_connections`` (16) connections: a burst waits briefly for a
    free one instead of failing. ``decode_responses`` is always off.

    The store is yours: close it with :meth:`aclose` (or ``async with``) after the clients
    using it. Nothing connects before the first call.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client_factory: ClientFactory | None = None,
        client: Any = None,
        prefix: str = "apimw",
        lease_ttl: float = DEFAULT_LEASE_TTL,
        cipher: Cipher | None = None,
        encryption_key: str | bytes | Sequence[str | bytes] | None = None,
        notifications: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        refresh_token_lifetime: float = REFRESH_TOKEN_LIFETIME,
        clock: Clock | None = None,
        **redis_kwargs: Any,
    ) -> None:
        if sum(x is not None for x in (url, client_factory, client)) != 1:
            raise ConfigurationError(
                "RedisTokenStore needs exactly one of url, client_factory or client"
            )
        if url is None and redis_kwargs:
            raise ConfigurationError("redis keyword arguments go with a url")
        lease_ttl = seconds("lease_ttl", lease_ttl)
        poll_interval = seconds("poll_interval", poll_interval)
        socket_timeout = seconds("socket_timeout", socket_timeout)
        socket_connect_timeout = seconds("socket_connect_timeout", socket_connect_timeout)
        refresh_token_lifetime = seconds("refresh_token_lifetime", refresh_token_lifetime)
        if cipher is not None and encryption_key is not None:
            raise ConfigurationError("pass cipher or encryption_key, not both")
        if encryption_key is not None:
            cipher = _make_cipher(encryption_key)
        if cipher is not None and not isinstance(cipher, Cipher):
            raise ConfigurationError("cipher needs encrypt(bytes) and decrypt(bytes) methods")
        if url is not None:
            self._server = describe_url(check_url(url))
        else:
            self._server = "<client_factory>" if client is None else "<client>"
        self._url = url
        self._factory = client_factory
        self._user_client = client
        self._bound: tuple[int, weakref.ref[asyncio.AbstractEventLoop]] | None = None
        self._redis_kwargs = connection_options(
            socket_timeout=socket_timeout,
            connect_timeout=socket_connect_timeout,
            pool_timeout=max(2.0, 2 * socket_timeout),
            max_connections=DEFAULT_MAX_CONNECTIONS,
            extra=redis_kwargs,
        )
        self._prefix = check_prefix(prefix)
        self._lease_ttl = float(lease_ttl)
        self._cipher = cipher
        self._notifications = notifications
        self._poll_interval = float(poll_interval)
        self._refresh_lifetime = float(refresh_token_lifetime)
        self._clock = clock or SYSTEM_CLOCK
        self._states: PerLoop[_LoopState] = PerLoop(
            self._create_state, close=_LoopState.close, abandon=_LoopState.abandon
        )
        self._closed = False
        self._warned_plaintext = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisTokenStore:
        """A store on the Redis server at ``url``; ``options`` as for the constructor (store
        options such as ``prefix``, ``lease_ttl``, ``encryption_key``, then any keyword of
        :meth:`redis.asyncio.Redis.from_url`)."""
        return cls(url, **options)

    # --- properties --------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The prefix of every Redis key of this store."""
        return self._prefix

    @property
    def lease_ttl(self) -> float:
        """The lease length (seconds) used when a caller passes none."""
        return self._lease_ttl

    @property
    def encrypted(self) -> bool:
        """Whether stored pairs are encrypted."""
        return self._cipher is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def token_key(self, key: str) -> str:
        """The Redis key of ``key``'s token pair."""
        return f"{self._prefix}:{{{_check_key(key)}}}:token"

    def lease_key(self, key: str) -> str:
        """The Redis key of ``key``'s refresh lease."""
        return f"{self._prefix}:{{{_check_key(key)}}}:lease"

    def channel(self, key: str) -> str:
        """The pub/sub channel announcing changes of ``key``'s pair."""
        return f"{self._prefix}:{{{_check_key(key)}}}:updated"

    # --- TokenStore --------------------------------------------------------------------------

    async def load(self, key: str) -> StoredToken | None:
        token_key = self.token_key(key)
        state = self._state()
        with _unavailable("load"):
            version, value = await state.client.hmget(token_key, ["v", "d"])
        if value is None:
            if version is not None:
                log.warning("stored token pair %s has no value; discarding it", token_key)
                with _unavailable("discard"):
                    await state.discard_empty(keys=[token_key], args=[self.channel(key)])
            return None
        try:
            raw = _as_bytes(value)
            if self._cipher is not None:
                raw = self._unseal(key, self._cipher.decrypt(raw))
            token = StoredToken.from_json(raw)
            if version is None or token.version != int(version):
                raise ValueError("version mismatch")
        except Exception as exc:
            # Never the value itself: it holds tokens.
            log.warning(
                "stored token pair %s is unreadable (%s: wrong encryption key, another key's "
                "pair, other format or corrupted); treating it as absent and discarding it",
                token_key,
                type(exc).__name__,
            )
            with _unavailable("discard"):
                await state.discard(keys=[token_key], args=[value, self.channel(key)])
            return None
        return token

    async def save(self, key: str, token: StoredToken, *, expected_version: int) -> bool:
        if expected_version < 0 or token.version != expected_version + 1:
            raise ValueError("a saved token's version must be expected_version + 1")
        value = token.to_json()
        if self._cipher is not None:
            value = self._cipher.encrypt(self._seal(key, value))
        elif not self._warned_plaintext:
            self._warned_plaintext = True
            log.info(
                "token pairs are stored unencrypted in Redis (%s, prefix %r): anyone who can "
                "read it can use them; pass encryption_key= to encrypt them at rest",
                self._server,
                self._prefix,
            )
        token_key = self.token_key(key)
        state = self._state()
        args: list[bytes | str | int] = [
            str(expected_version),
            str(token.version),
            value,
            _ms(self._key_ttl(token)),
            self.channel(key),
        ]
        with _unavailable("save"):
            saved = await state.save(keys=[token_key], args=args)
        return bool(saved)

    async def acquire_lease(self, key: str, ttl: float | None = None) -> str | None:
        lease_key = self.lease_key(key)
        owner = secrets.token_hex(16)
        state = self._state()
        with _unavailable("acquire_lease"):
            taken = await state.client.set(
                lease_key, owner, nx=True, px=_ms(self._lease_ttl if ttl is None else ttl)
            )
        return owner if taken else None

    async def renew_lease(self, key: str, owner: str, ttl: float | None = None) -> bool:
        lease_key = self.lease_key(key)
        state = self._state()
        ms = _ms(self._lease_ttl if ttl is None else ttl)
        with _unavailable("renew_lease"):
            renewed = await state.renew(keys=[lease_key], args=[owner, ms])
        return bool(renewed)

    async def release_lease(self, key: str, owner: str) -> None:
        lease_key = self.lease_key(key)
        state = self._state()
        with _unavailable("release_lease"):
            await state.release(keys=[lease_key], args=[owner, self.channel(key)])

    async def wait_for_update(self, key: str, version: int, timeout: float) -> None:
        """Return once the stored version differs from ``version``, nobody holds the lease
        any more (its holder released it or died: the version may then never change), or
        after ``timeout`` seconds.

        Woken by the loop's shared subscription; re-reads version and lease at least every
        :data:`SAFETY_POLL_INTERVAL` (every ``poll_interval`` while no subscription works).
        """
        self.token_key(key)
        state = self._state()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        listener = state.listener
        event = listener.watch(key) if listener is not None else None
        try:
            if listener is not None:
                await listener.wait_subscribed(min(SUBSCRIBE_WAIT, deadline - loop.time()))
            while True:
                if event is not None:
                    event.clear()
                stored, leased = await self._probe(state, key)
                if stored != version or not leased:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                if listener is not None and event is not None and listener.subscribed:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(event.wait(), min(remaining, SAFETY_POLL_INTERVAL))
                else:
                    await asyncio.sleep(min(remaining, self._poll_interval))
        finally:
            if listener is not None and event is not None:
                listener.unwatch(key, event)

    async def aclose(self) -> None:
        """Close the running loop's client (other loops' clients close when their loop
        shuts down); the store then raises :class:`StoreUnavailableError`."""
        self._closed = True
        await self._states.aclose()

    # --- extras ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that Redis answers; :class:`StoreUnavailableError` if not."""
        state = self._state()
        with _unavailable("ping"):
            await state.client.ping()

    async def __aenter__(self) -> RedisTokenStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisTokenStore(server={self._server!r}, prefix={self._prefix!r}, "
            f"encrypted={self.encrypted})"
        )

    # --- internals ---------------------------------------------------------------------------

    async def _probe(self, state: _LoopState, key: str) -> tuple[int, bool]:
        """``(stored version, lease held)`` in one round trip, shared by the concurrent
        waiters of one loop (so a thousand waiters cost one command, one connection)."""
        task = state.probes.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._probe_once(state, key))
            state.probes[key] = task

            def done(finished: asyncio.Task[tuple[int, bool]]) -> None:
                if state.probes.get(key) is finished:
                    del state.probes[key]
                if not finished.cancelled():
                    finished.exception()  # retrieved: the waiters may all have gone

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _probe_once(self, state: _LoopState, key: str) -> tuple[int, bool]:
        with _unavailable("wait_for_update"):
            async with state.client.pipeline(transaction=False) as pipe:
                pipe.hget(self.token_key(key), "v")
                pipe.exists(self.lease_key(key))
                stored, leased = await pipe.execute()
        try:
            version = int(stored or 0)
        except ValueError:
            # Garbage instead of a version: report a version nobody waits for, so the waiter
            # loads the pair, and load() discards what it cannot read.
            version = -1
        return version, bool(leased)

    def _binding(self, key: str) -> bytes:
        return f"apimw-token-pair\0{self._prefix}\0{key}\0".encode()

    def _seal(self, key: str, plaintext: bytes) -> bytes:
        # The cipher has no associated data: the key the value belongs to is encrypted with it,
        # so a value copied to another key (by anyone who can write to Redis) does not load.
        return self._binding(key) + plaintext

    def _unseal(self, key: str, plaintext: bytes) -> bytes:
        binding = self._binding(key)
        if not plaintext.startswith(binding):
            raise ValueError("the stored pair belongs to another key")
        return plaintext[len(binding) :]

    def _key_ttl(self, token: StoredToken) -> float:
        if token.refresh_token is not None:
            end = token.refresh_issued_at + self._refresh_lifetime
        else:
            end = token.expires_at
        return max(end - self._clock.time(), 0.0) + KEY_TTL_GRACE

    def _state(self) -> _LoopState:
        if self._closed:
            raise StoreUnavailableError("redis token store: the store was closed")
        return self._states.get()

    def _create_state(self) -> _LoopState:
        if self._user_client is not None:
            bind(self, asyncio.get_running_loop(), "RedisTokenStore")
            return _LoopState(
                self._user_client, self._prefix, self._notifications, False, owns_client=False
            )
        client = new_client("redis token store", self._url, self._factory, self._redis_kwargs)
        return _LoopState(client, self._prefix, self._notifications, self._factory is None)


def _check_key(key: str) -> str:
    return check_key(key, "store")
