"""Durable webhook intake and fleet-wide duplicate suppression on Redis.

:class:`RedisWebhookQueue` stores each verified delivery in a Redis Stream before the
receiver answers 200, and runs the handler from a consumer group in every process that
started the receiver. :class:`RedisWebhookDedup` remembers handled events for the whole fleet
when you run without the queue (hand-off or memory mode).

Every key of one queue shares one hash tag, so on a Redis Cluster they live in one slot and
each script touches one slot (``name`` distinguishes receivers sharing a Redis)::

    {prefix}:{<name>}:stream     stream  entries not yet handled: b = raw body, t = type, i = id
    {prefix}:{<name>}:dead       stream  dead letters: b, t, i + source, attempts, error, failed_at
    {prefix}:{<name>}:seen:<h>   string  "d" (stored or handled) / "p" (hand-off in progress),
                                         with a TTL; h = sha256 of (type, id), 32 hex digits

The consumer group (``group``, default ``"apimw"``) is created on the stream at its start
(``0``: a backlog stored before any consumer ran is read too). Handled entries are
acknowledged *and deleted* (``XACK`` + ``XDEL`` in one script), so the stream holds only what
is not handled yet; when it holds ``max_length`` entries, new deliveries are refused (503,
APIMW redelivers) instead of trimming anything not handled. The dead-letter stream is trimmed
to about ``dead_max_length`` entries (``MAXLEN ~``, oldest first).

Needs Redis 6.2 or later (``XAUTOCLAIM``). Durability is Redis's: without persistence (AOF)
a Redis restart loses what it held, like any Redis data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import secrets
import socket
import weakref
from collections.abc import Sequence
from typing import Any, Final

import attrs

try:
    from redis.exceptions import NoScriptError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "apimw_async.webhooks.redis needs redis-py: pip install 'apimw-async[redis]'"
    ) from exc

from .._config import LOGGER_NAME, seconds
from .._errors import ConfigurationError, StoreUnavailableError
from .._loops import PerLoop
from ..stores._redis_base import (
    REDIS_ERRORS,
    as_text,
    bind,
    check_url,
    close_client,
    connection_options,
    describe_url,
    new_client,
    unavailable,
)
from ..stores._redis_base import ms as _ms
from ._events import WebhookEvent, WebhookPayloadError, parse_event
from ._receiver import DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_CONCURRENCY, DedupState, WebhookHandler

__all__ = [
    "DEFAULT_CLAIM_IDLE",
    "DEFAULT_DEDUP_TTL",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_LENGTH",
    "DeadLetter",
    "QueueInfo",
    "QueueStats",
    "RedisWebhookDedup",
    "RedisWebhookQueue",
    "WebhookQueueFullError",
]

log = logging.getLogger(f"{LOGGER_NAME}.webhooks.redis")

#: Seconds an entry may sit with a consumer that does not touch it before another takes it.
DEFAULT_CLAIM_IDLE: Final = 60.0
#: Handler attempts (claims by other consumers count) before an entry is dead-lettered.
DEFAULT_MAX_ATTEMPTS: Final = 5
#: Entries not yet handled that the stream may hold before intake refuses new ones.
DEFAULT_MAX_LENGTH: Final = 100_000
#: Dead letters kept (approximately; the oldest go first).
DEFAULT_DEAD_MAX_LENGTH: Final = 10_000
#: How long a stored or handled event's (type, id) is remembered: APIMW's retries span about
#: 2 h 36 min, a day covers them with room for a late manual redelivery.
DEFAULT_DEDUP_TTL: Final = 86_400.0
#: First retry delay after a failed handler call; doubles per attempt up to the maximum.
DEFAULT_RETRY_BACKOFF: Final = 1.0
DEFAULT_MAX_BACKOFF: Final = 60.0
#: How long one XREADGROUP waits for new entries (must stay under the socket timeout).
DEFAULT_BLOCK: Final = 1.0
DEFAULT_SOCKET_TIMEOUT: Final = 3.0
DEFAULT_CONNECT_TIMEOUT: Final = 1.0
#: Connections per event loop: one blocked reader, the intake requests and the maintenance.
DEFAULT_MAX_CONNECTIONS: Final = 32
#: Consumers that have held nothing for this long (and at least 10 claim periods) are
#: removed from the group, so SIGKILLed processes do not pile up in XINFO CONSUMERS.
STALE_CONSUMER_IDLE: Final = 3600.0

_ERROR_PAUSE_MIN: Final = 0.05
_ERROR_PAUSE_MAX: Final = 2.0
_READ_BATCH: Final = 64

# KEYS[1] stream, KEYS[2] seen key (absent for events without id).
# ARGV: body, type, id, max length, seen ttl ms. 1 stored, 0 duplicate, -1 full.
_ENQUEUE: Final = """
if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('XADD', KEYS[1], '*', 'b', ARGV[1], 't', ARGV[2], 'i', ARGV[3])
if #KEYS > 1 then
  redis.call('SET', KEYS[2], 'd', 'PX', ARGV[5])
end
return 1
"""

# KEYS[1] stream; ARGV: group, entry ids... (the handled entries of one event-loop turn).
_ACK: Final = """
local ids = {unpack(ARGV, 2)}
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return acked
"""

# KEYS[1] stream; ARGV: group, consumer, mode ('touch' or 'attempt'), entry ids...
# Per id: its delivery count if this consumer still holds it (bumped by one for 'attempt';
# 'touch' only resets the idle time), else 0.
_HOLD: Final = """
local out = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    local n = tonumber(p[1][4])
    if ARGV[3] == 'attempt' then
      n = n + 1
    end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', n, 'JUSTID')
    out[#out + 1] = n
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS[1] stream; ARGV: group, consumer, min idle ms, cursor, count.
# Returns {next cursor, {{id, fields, delivery count}, ...}}.
_CLAIM: Final = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local n = 1
    if p[1] then n = tonumber(p[1][4]) end
    out[#out + 1] = {e[1], e[2], n}
  end
end
return {r[1], out}
"""

# KEYS[1] stream, KEYS[2] dead stream; ARGV: group, consumer, entry id, attempts, error,
# dead max length. Moves the entry if this consumer still holds it: 1 moved, 0 not held.
_DEAD: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then
  return 0
end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if e[1] then
  local t = redis.call('TIME')
  local args = {KEYS[2], 'MAXLEN', '~', ARGV[6], '*'}
  for _, v in ipairs(e[1][2]) do args[#args + 1] = v end
  for _, v in ipairs({'source', ARGV[3], 'attempts', ARGV[4], 'error', ARGV[5],
                      'failed_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2]))}) do
    args[#args + 1] = v
  end
  redis.call('XADD', unpack(args))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] stream, KEYS[2] dead stream; ARGV: dead-letter id. 1 replayed, 0 no such entry.
_REPLAY: Final = """
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if not e[1] then
  return 0
end
local f = e[1][2]
local keep = {b = true, t = true, i = true}
local args = {KEYS[1], '*'}
for i = 1, #f, 2 do
  if keep[f[i]] then
    args[#args + 1] = f[i]
    args[#args + 1] = f[i + 1]
  end
end
redis.call('XADD', unpack(args))
redis.call('XDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] stream; ARGV: group, consumer, stale idle ms, '1' to remove this consumer. Removes
# this consumer if asked and it holds nothing, and any other consumer idle longer than the
# stale time that holds nothing (a consumer that holds entries is never removed: XGROUP
# DELCONSUMER would drop them from the pending list, and nobody would claim them).
_FORGET: Final = """
local removed = 0
if ARGV[4] == '1' then
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
  if not mine[1] then
    removed = removed + redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  end
end
if tonumber(ARGV[3]) > 0 then
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
        and tonumber(info['idle']) > tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
      removed = removed + 1
    end
  end
end
return removed
"""

# KEYS[1] seen key; ARGV: value ('p' or 'd'), ttl ms. 'new', 'done' or 'busy'.
_DEDUP_CLAIM: Final = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'new'
end
if v == 'p' then
  return 'busy'
end
return 'done'
"""

# KEYS[1] seen key. Deletes an in-progress mark only.
_DEDUP_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == 'p' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class WebhookQueueFullError(StoreUnavailableError):
    """The webhook stream holds ``max_length`` entries not yet handled: the delivery is
    refused (answered 503) rather than anything unhandled being trimmed."""


@attrs.define
class QueueStats:
    """Counters of one :class:`RedisWebhookQueue` in this process (they only grow)."""

    #: Deliveries stored in the stream.
    stored: int = 0
    #: Deliveries whose (type, id) was already stored or handled (not stored again).
    duplicates: int = 0
    #: Deliveries refused because the stream was full.
    refused_full: int = 0
    #: Deliveries not stored because Redis failed or was too slow.
    store_errors: int = 0
    #: New entries read by this process's consumer.
    read: int = 0
    #: Entries taken over from a consumer idle for ``claim_idle`` (dead or stuck).
    claimed: int = 0
    #: Entries handled and acknowledged (an entry whose acknowledgement failed is handled
    #: again later: at least once).
    handled: int = 0
    #: Handler calls that raised.
    failed_attempts: int = 0
    #: Handler calls repeated after a failure (after the backoff).
    retries: int = 0
    #: Entries moved to the dead-letter stream by this process.
    dead_lettered: int = 0
    #: Dead letters put back into the stream by :meth:`RedisWebhookQueue.replay`.
    replayed: int = 0
    #: Entries this consumer lost to another (it stopped touching them in time).
    lost_ownership: int = 0
    #: Entries left pending at close (another consumer takes them after ``claim_idle``).
    left_at_close: int = 0
    #: Redis errors met by the consumer (it pauses and goes on).
    consumer_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return attrs.asdict(self)


@attrs.frozen
class QueueInfo:
    """A snapshot of the queue in Redis (all processes)."""

    #: Entries not yet handled (read or not).
    length: int
    #: Entries read by a consumer and not yet acknowledged.
    pending: int
    #: Dead letters.
    dead: int
    #: Consumers registered in the group.
    consumers: int


@attrs.frozen
class DeadLetter:
    """An entry whose handler failed ``attempts`` times; :meth:`RedisWebhookQueue.replay` it."""

    #: The dead-letter stream entry id (pass it to ``replay`` or ``discard_dead_letters``).
    id: str
    #: Event type and id as delivered.
    event_type: str
    event_id: str | None
    #: Handler attempts made.
    attempts: int
    #: The last exception's type name (never its message: it may hold data).
    error: str
    #: Unix time it was dead-lettered (Redis's clock).
    failed_at: float
    #: The entry id it had in the main stream.
    source_id: str
    #: The delivery body, exactly as received (its signature was checked at intake).
    body: bytes = attrs.field(repr=False)

    @property
    def event(self) -> WebhookEvent:
        """The parsed event."""
        return parse_event(self.body)


class _Script:
    """A Lua script run by EVALSHA, loaded on NOSCRIPT (works on Redis and RedisCluster)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


_S_ENQUEUE: Final = _Script(_ENQUEUE)
_S_ACK: Final = _Script(_ACK)
_S_HOLD: Final = _Script(_HOLD)
_S_CLAIM: Final = _Script(_CLAIM)
_S_DEAD: Final = _Script(_DEAD)
_S_REPLAY: Final = _Script(_REPLAY)
_S_FORGET: Final = _Script(_FORGET)
_S_DEDUP_CLAIM: Final = _Script(_DEDUP_CLAIM)
_S_DEDUP_RELEASE: Final = _Script(_DEDUP_RELEASE)


def _unavailable(what: str) -> contextlib.AbstractContextManager[None]:
    """Turn any Redis or socket failure into :class:`StoreUnavailableError`."""
    return unavailable("redis webhook queue", what)


def _raw(value: Any) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def _fields(flat: Any) -> dict[str, Any]:
    if isinstance(flat, dict):
        return {as_text(k): v for k, v in flat.items()}
    items = list(flat)
    return {as_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _check_name(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 200
        or any(c.isspace() or c in "{}" for c in value)
    ):
        raise ConfigurationError(
            f"{what} must be a short non-empty string without spaces or braces"
        )
    return value


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive integer")
    return value


def _check_source(owner: str, client: Any, url: object, redis_kwargs: dict[str, Any]) -> None:
    """Exactly one of a client you made and a URL; redis keyword arguments only with a URL."""
    if (client is None) == (url is None):
        raise ConfigurationError(f"{owner} needs a client or a url (from_url)")
    if client is not None and redis_kwargs:
        raise ConfigurationError("redis keyword arguments go with a url, not a client")
    if client is not None and not callable(getattr(client, "evalsha", None)):
        raise ConfigurationError("client must be a redis.asyncio Redis or RedisCluster")


class _Connections:
    """The Redis client of each event loop (redis-py clients are bound to the loop that made
    their connections; see :class:`PerLoop`): one made from the URL for each loop and closed
    with it, or the user's own, bound to the loop and process that first use it (as for the
    token store and the rate limiter, see :func:`bind`) and never closed for them."""

    def __init__(
        self,
        owner: str,
        client: Any,
        url: str | None,
        socket_timeout: float,
        redis_kwargs: dict[str, Any],
    ) -> None:
        self._owner = owner
        self._client = client
        self._bound: tuple[int, weakref.ref[asyncio.AbstractEventLoop]] | None = None
        self._url = url
        #: The server, for a repr: ``<client>`` or the URL without credentials.
        self.server = "<client>" if url is None else describe_url(check_url(url))
        self._kwargs = connection_options(
            socket_timeout=socket_timeout,
            connect_timeout=DEFAULT_CONNECT_TIMEOUT,
            pool_timeout=max(2.0, socket_timeout),
            max_connections=DEFAULT_MAX_CONNECTIONS,
            extra=redis_kwargs,
        )
        self._clients: PerLoop[Any] = PerLoop(self._create, close=self._close)

    @property
    def user_made(self) -> bool:
        """Whether the client is the user's (``client=``) rather than made from a URL."""
        return self._client is not None

    def _create(self) -> Any:
        if self._client is not None:
            bind(
                self,
                asyncio.get_running_loop(),
                self._owner,
                f"use {self._owner}.from_url() (a client per event loop and process) or make "
                "one in each process and event loop that uses it",
            )
            return self._client
        return new_client("redis webhook queue", self._url, None, self._kwargs)

    async def _close(self, client: Any) -> None:
        if self._client is None:  # a user's client is the user's to close
            await close_client(client)

    def get(self) -> Any:
        """The running loop's client; :class:`ConfigurationError` for a client you passed
        that another loop or the parent process used first."""
        return self._clients.get()

    async def aclose(self) -> None:
        """Close the running loop's own client (a user's client stays open)."""
        await self._clients.aclose()


def _seen_key(base: str, key: tuple[str, str]) -> str:
    digest = hashlib.sha256(f"{key[0]}\0{key[1]}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{base}:seen:{digest[:32]}"


class _Held:
    __slots__ = ("lost", "settling")

    def __init__(self) -> None:
        self.lost = False
        #: Being acknowledged or dead-lettered: gone from the pending list any moment now,
        #: which is not a loss of ownership.
        self.settling = False


class RedisWebhookQueue:
    """Durable webhook intake: a Redis Stream written before the 200, consumed by a group.

    Pass it as ``WebhookReceiver(secret, on_event, queue=queue)``. Make it with
    :meth:`from_url` (a client per event loop and process, made and closed by the queue) or
    with a ``redis.asyncio.Redis`` / ``RedisCluster`` client you made (``decode_responses=False``;
    its ``socket_timeout``, if any, must exceed ``block``; you close it): it is bound to the
    event loop and the process that first use it, and using the queue from another one raises
    :class:`~apimw_async.ConfigurationError`.

    Intake (:meth:`put`) stores the exact body atomically with a ``(type, id)`` mark kept
    ``dedup_ttl`` seconds (``0``: no de-duplication), so a redelivery to any process is
    acknowledged and stored only once; an event is marked only when it is stored. With
    ``max_length`` entries not yet handled, intake raises :class:`WebhookQueueFullError`.

    Consumers (:meth:`start`, called by the receiver's ``start``) read new entries with
    ``XREADGROUP``, at most ``concurrency`` handler calls at once; an entry is acknowledged
    and deleted only after its handler returned. A failed call is retried after
    ``retry_backoff`` seconds, doubling up to ``max_backoff`` (with jitter); entries this
    consumer holds are touched every ``claim_idle / 4`` seconds, and entries another consumer
    has not touched for ``claim_idle`` seconds (it died, or its loop is stuck) are taken over
    with ``XAUTOCLAIM``. After ``max_attempts`` attempts (a take-over counts as one, so an
    event that kills its process also ends there) the entry moves to the dead-letter stream:
    list it with :meth:`dead_letters`, put it back with :meth:`replay`. Handlers therefore
    run *at least once*: make them idempotent.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        url: str | None = None,
        name: str = "default",
        prefix: str = "apimw:webhooks",
        group: str = "apimw",
        consumer: str | None = None,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_length: int = DEFAULT_MAX_LENGTH,
        dead_max_length: int = DEFAULT_DEAD_MAX_LENGTH,
        dedup_ttl: float = DEFAULT_DEDUP_TTL,
        block: float = DEFAULT_BLOCK,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        **redis_kwargs: Any,
    ) -> None:
        _check_source("RedisWebhookQueue", client, url, redis_kwargs)
        self._name = _check_name(name, "name")
        self._prefix = _check_name(prefix, "prefix")
        self._group = _check_name(group, "group")
        self._consumer_name = None if consumer is None else _check_name(consumer, "consumer")
        self._claim_idle = seconds("claim_idle", claim_idle)
        self._max_attempts = _positive_int(max_attempts, "max_attempts")
        self._retry_backoff = seconds("retry_backoff", retry_backoff)
        self._max_backoff = seconds("max_backoff", max_backoff)
        self._max_length = _positive_int(max_length, "max_length")
        self._dead_max_length = _positive_int(dead_max_length, "dead_max_length")
        self._dedup_ttl = seconds("dedup_ttl", dedup_ttl, allow_zero=True)
        self._block = seconds("block", block)
        socket_timeout = seconds("socket_timeout", socket_timeout)
        if url is not None and socket_timeout <= self._block:
            raise ConfigurationError("socket_timeout must exceed block")
        self._connections = _Connections(
            "RedisWebhookQueue", client, url, socket_timeout, redis_kwargs
        )
        base = f"{self._prefix}:{{{self._name}}}"
        self._base = base
        self.stream_key: Final = f"{base}:stream"
        self.dead_key: Final = f"{base}:dead"
        self.stats = QueueStats()
        # Consumer state (set by start()).
        self._handler: WebhookHandler | None = None
        self._consumer = ""
        self._free = 0
        self._free_changed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, _Held] = {}
        # Entries handled but not yet acknowledged: one script acknowledges a whole batch.
        self._acks: list[tuple[str, asyncio.Future[bool]]] = []
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisWebhookQueue:
        """A queue on the Redis server at ``url``; ``options`` as for the constructor, then any
        keyword of :meth:`redis.asyncio.Redis.from_url`."""
        return cls(url=url, **options)

    # --- properties --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The receiver name in the keys (the hash tag)."""
        return self._name

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def consumer(self) -> str:
        """This process's consumer name (empty before :meth:`start`)."""
        return self._consumer

    @property
    def claim_idle(self) -> float:
        """Seconds after which an untouched entry of another consumer is taken over."""
        return self._claim_idle

    @property
    def max_attempts(self) -> int:
        """Handler attempts before an entry is dead-lettered."""
        return self._max_attempts

    @property
    def running(self) -> bool:
        """Whether this process's consumers run."""
        return bool(self._loops) and not self._closed

    @property
    def in_progress(self) -> int:
        """Entries this consumer holds (running, or waiting for a retry)."""
        return len(self._held)

    def seen_key(self, event_type: str, event_id: str) -> str:
        """The Redis key remembering that ``(event_type, event_id)`` was stored."""
        return _seen_key(self._base, (event_type, event_id))

    # --- intake ------------------------------------------------------------------------------

    async def put(self, event: WebhookEvent, raw_body: bytes) -> bool:
        """Store a verified delivery: ``True`` stored, ``False`` a redelivery of one already
        stored (or handled) within ``dedup_ttl``. Raises :class:`WebhookQueueFullError` or
        :class:`~apimw_async.StoreUnavailableError` when it is not stored."""
        if self._closed:
            raise StoreUnavailableError("redis webhook queue: the queue was closed")
        keys = [self.stream_key]
        if event.id is not None and self._dedup_ttl > 0:
            keys.append(_seen_key(self._base, (event.type, event.id)))
        args = [
            bytes(raw_body),
            event.type,
            event.id or "",
            self._max_length,
            _ms(self._dedup_ttl),
        ]
        try:
            with _unavailable("store"):
                result = int(await _S_ENQUEUE(self._connections.get(), keys, args))
        except StoreUnavailableError:
            self.stats.store_errors += 1
            raise
        except asyncio.CancelledError:
            self.stats.store_errors += 1  # the receiver's deadline passed
            raise
        if result < 0:
            self.stats.refused_full += 1
            raise WebhookQueueFullError(
                f"redis webhook queue: {self.stream_key} holds {self._max_length} entries not "
                "yet handled (are consumers running?); delivery refused"
            )
        if result == 0:
            self.stats.duplicates += 1
            return False
        self.stats.stored += 1
        return True

    # --- consumers ---------------------------------------------------------------------------

    async def start(
        self, handler: WebhookHandler, *, concurrency: int = DEFAULT_MAX_CONCURRENCY
    ) -> None:
        """Run ``handler`` on queued events in this process until :meth:`aclose`.

        Returns at once (the consumers run as tasks of the running loop); Redis being down
        is not an error here: the consumers wait for it.
        """
        if self._closed:
            raise ConfigurationError("the webhook queue was closed; make a new one")
        if self._loops:
            raise ConfigurationError("this queue's consumers already run")
        if not callable(handler):
            raise ConfigurationError("handler must be an async callable taking the event")
        if self._connections.user_made:
            # Refused here, not in the consumer tasks: a client you passed that another loop
            # or the parent process used first is a mistake to report, not an outage to wait.
            self._connections.get()
        self._handler = handler
        self._free = _positive_int(concurrency, "concurrency")
        self._consumer = self._consumer_name or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )
        self._free_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._read_loop(), name="apimw-webhook-reader"),
            loop.create_task(self._maintain_loop(), name="apimw-webhook-claimer"),
        ]
        log.info(
            "webhook queue consumer %s started on %s (group %s, %d at once)",
            self._consumer,
            self.stream_key,
            self._group,
            self._free,
        )

    async def aclose(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop the consumers: no new reads, running handlers get ``timeout`` seconds, then
        are cancelled. What was not handled stays in the stream for other consumers (after
        ``claim_idle``) or the next start. Then the queue's own clients are closed."""
        if self._closed:
            return
        self._closed = True
        if self._stopping is not None:
            self._stopping.set()
        if self._free_changed is not None:
            self._free_changed.set()
        if self._loops:
            # Let a blocked XREADGROUP return on its own: cancelling a redis-py command in
            # flight can leave its connection waiting on the socket.
            await asyncio.wait(self._loops, timeout=self._block + 1.0)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            if self._tasks and (timeout is None or timeout > 0):
                await asyncio.wait(set(self._tasks), timeout=timeout)
        finally:
            left = len(self._held)
            stragglers = [task for task in self._tasks if not task.done()]
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*stragglers, return_exceptions=True)
            if left:
                self.stats.left_at_close += left
                log.info(
                    "webhook queue consumer %s closed holding %d entr(y/ies); another "
                    "consumer takes them over after %g s",
                    self._consumer,
                    left,
                    self._claim_idle,
                )
            if self._loops:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._forget_consumer(0.0, itself=True), 2.0)
            await self._connections.aclose()

    # --- dead letters, inspection -----------------------------------------------------------

    async def dead_letters(self, count: int = 100, *, after: str | None = None) -> list[DeadLetter]:
        """Up to ``count`` dead letters, oldest first (``after``: continue past that id)."""
        count = _positive_int(count, "count")
        start = "-" if after is None else f"({after}"
        with _unavailable("list dead letters"):
            entries = await self._connections.get().xrange(self.dead_key, start, "+", count=count)
        letters = []
        for entry_id, flat in entries:
            fields = _fields(flat)
            event_id = as_text(fields.get("i", b""))
            letters.append(
                DeadLetter(
                    id=as_text(entry_id),
                    event_type=as_text(fields.get("t", b"")),
                    event_id=event_id or None,
                    attempts=int(as_text(fields.get("attempts", b"0")) or 0),
                    error=as_text(fields.get("error", b"")),
                    failed_at=float(as_text(fields.get("failed_at", b"0")) or 0),
                    source_id=as_text(fields.get("source", b"")),
                    body=_raw(fields.get("b", b"")),
                )
            )
        return letters

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back into the stream (all of them with ``ids=None``), to be
        handled again with fresh attempts; returns how many were replayed."""
        client = self._connections.get()
        if ids is None:
            with _unavailable("list dead letters"):
                entries = await client.xrange(self.dead_key, "-", "+")
            ids = [as_text(entry_id) for entry_id, _ in entries]
        elif isinstance(ids, str):
            raise ConfigurationError("ids must be a list of dead-letter ids")
        replayed = 0
        for entry_id in ids:
            with _unavailable("replay"):
                replayed += int(
                    await _S_REPLAY(client, [self.stream_key, self.dead_key], [entry_id])
                )
        self.stats.replayed += replayed
        if replayed:
            log.info("replayed %d dead webhook event(s) into %s", replayed, self.stream_key)
        return replayed

    async def discard_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all with ``ids=None``); returns how many were deleted."""
        client = self._connections.get()
        with _unavailable("discard dead letters"):
            if ids is None:
                count = int(await client.xlen(self.dead_key))
                await client.delete(self.dead_key)
                return count
            if isinstance(ids, str):
                raise ConfigurationError("ids must be a list of dead-letter ids")
            return int(await client.xdel(self.dead_key, *ids)) if ids else 0

    async def info(self) -> QueueInfo:
        """Lengths of the stream, its pending entries and the dead letters, and consumers."""
        client = self._connections.get()
        with _unavailable("info"):
            length = int(await client.xlen(self.stream_key))
            dead = int(await client.xlen(self.dead_key))
            try:
                pending = await client.xpending(self.stream_key, self._group)
                consumers = await client.xinfo_consumers(self.stream_key, self._group)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                    raise
                return QueueInfo(length, 0, dead, 0)
        count = pending.get("pending", 0) if isinstance(pending, dict) else pending[0]
        return QueueInfo(length, int(count or 0), dead, len(consumers))

    async def ping(self) -> None:
        """Check that Redis answers; :class:`~apimw_async.StoreUnavailableError` if not."""
        with _unavailable("ping"):
            await self._connections.get().ping()

    async def __aenter__(self) -> RedisWebhookQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisWebhookQueue(server={self._connections.server!r}, stream={self.stream_key!r}, "
            f"group={self._group!r}, claim_idle={self._claim_idle:g}, "
            f"max_attempts={self._max_attempts}, running={self.running})"
        )

    # --- internals ---------------------------------------------------------------------------

    def _take_slot(self) -> None:
        self._free -= 1

    def _give_slot(self) -> None:
        self._free += 1
        if self._free_changed is not None:
            self._free_changed.set()

    async def _wait_slot(self) -> None:
        assert self._free_changed is not None
        assert self._stopping is not None
        while self._free <= 0 and not self._stopping.is_set():
            self._free_changed.clear()
            await self._free_changed.wait()

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; ``False`` if the queue is stopping meanwhile."""
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return not self._stopping.is_set()

    def _consumer_error(self, what: str, exc: BaseException, pause: float) -> float:
        self.stats.consumer_errors += 1
        log.warning(
            "webhook queue consumer: %s failed (%s); retrying in %.2f s",
            what,
            type(exc).__name__,
            pause,
        )
        return min(_ERROR_PAUSE_MAX, pause * 2)

    async def _ensure_group(self, client: Any) -> None:
        try:
            await client.xgroup_create(self.stream_key, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_loop(self) -> None:
        pause = _ERROR_PAUSE_MIN
        group_ready = False
        block_ms = _ms(self._block)
        assert self._stopping is not None
        while True:
            await self._wait_slot()
            if self._stopping.is_set():
                return
            try:
                client = self._connections.get()
                if not group_ready:
                    await self._ensure_group(client)
                    group_ready = True
                reply = await client.xreadgroup(
                    self._group,
                    self._consumer,
                    {self.stream_key: ">"},
                    count=min(self._free, _READ_BATCH),
                    block=block_ms,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream (restart, flush): recreate
                    group_ready = False
                pause = self._consumer_error("read", exc, pause)
                await self._pause(pause)
                continue
            except (*REDIS_ERRORS, StoreUnavailableError) as exc:
                pause = self._consumer_error("read", exc, pause)
                await self._pause(pause)
                continue
            pause = _ERROR_PAUSE_MIN
            for entry_id, fields in _entries(reply):
                self.stats.read += 1
                # Even when stopping: the entry is this consumer's now; running it beats
                # leaving it idle until another consumer's claim_idle passes.
                self._begin(entry_id, fields, 1)

    async def _maintain_loop(self) -> None:
        interval = max(0.01, self._claim_idle / 4)
        cursor = "0-0"
        pause = _ERROR_PAUSE_MIN
        forget_every = max(60.0, self._claim_idle * 10)
        loop = asyncio.get_running_loop()
        next_forget = loop.time() + forget_every
        while await self._pause(interval):
            try:
                client = self._connections.get()
                if self._held:
                    await self._touch(client)
                if self._free > 0:
                    cursor = await self._claim(client, cursor)
                if loop.time() >= next_forget:
                    next_forget = loop.time() + forget_every
                    await self._forget_consumer(stale=max(STALE_CONSUMER_IDLE, forget_every))
                pause = _ERROR_PAUSE_MIN
            except (*REDIS_ERRORS, StoreUnavailableError) as exc:
                pause = self._consumer_error("claim", exc, pause)

    async def _touch(self, client: Any) -> None:
        ids = list(self._held)
        counts = await _S_HOLD(
            client, [self.stream_key], [self._group, self._consumer, "touch", *ids]
        )
        for entry_id, count in zip(ids, counts, strict=False):
            held = self._held.get(entry_id)
            if held is not None and not int(count) and not held.lost and not held.settling:
                held.lost = True
                self.stats.lost_ownership += 1

    async def _claim(self, client: Any, cursor: str) -> str:
        args = [self._group, self._consumer, _ms(self._claim_idle), cursor, self._free]
        next_cursor, entries = await _S_CLAIM(client, [self.stream_key], args)
        for entry_id, flat, count in entries:
            if self._free <= 0:  # pragma: no cover - count=free bounds the reply
                break
            self.stats.claimed += 1
            self._begin(entry_id, flat, int(count))
        return as_text(next_cursor)

    async def _forget_consumer(self, stale: float, *, itself: bool = False) -> None:
        client = self._connections.get()
        stale_ms = 0 if stale <= 0 else _ms(stale)
        args = [self._group, self._consumer, stale_ms, "1" if itself else "0"]
        await _S_FORGET(client, [self.stream_key], args)

    def _begin(self, entry_id: Any, flat: Any, attempts: int) -> None:
        entry = as_text(entry_id)
        if entry in self._held:  # a claim of an entry this consumer already works on
            return
        self._take_slot()
        self._held[entry] = held = _Held()
        task = asyncio.get_running_loop().create_task(
            self._process(entry, _fields(flat), attempts, held), name="apimw-webhook-entry"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(
        self, entry: str, fields: dict[str, Any], attempts: int, held: _Held
    ) -> None:
        assert self._handler is not None
        holding_slot = True
        try:
            body = _raw(fields.get("b", b""))
            try:
                event: WebhookEvent | None = parse_event(body)
            except WebhookPayloadError:
                event = None  # stored by something else than put(): never runnable
            while True:
                if event is None:
                    error = "WebhookPayloadError"
                    attempts = max(attempts, self._max_attempts)
                elif attempts > self._max_attempts:
                    error = "TooManyAttempts"  # taken over after its last attempt
                else:
                    try:
                        await self._handler(event)
                    except Exception as exc:
                        error = type(exc).__name__
                        self.stats.failed_attempts += 1
                    else:
                        held.settling = True
                        if await self._ack(entry):
                            self.stats.handled += 1
                        return
                if attempts >= self._max_attempts:
                    held.settling = True
                    moved = await self._settle(
                        _S_DEAD,
                        [self.stream_key, self.dead_key],
                        [
                            self._group,
                            self._consumer,
                            entry,
                            attempts,
                            error,
                            self._dead_max_length,
                        ],
                    )
                    if moved:
                        self.stats.dead_lettered += 1
                        log.error(
                            "webhook event %r %r failed %d time(s) (%s): moved to %s",
                            as_text(fields.get("t", b"")),
                            as_text(fields.get("i", b"")),
                            attempts,
                            error,
                            self.dead_key,
                        )
                    return
                delay = min(self._max_backoff, self._retry_backoff * 2 ** (attempts - 1))
                delay *= random.uniform(0.8, 1.2)  # jitter, not security
                self._give_slot()
                holding_slot = False
                if not await self._pause(delay):
                    return
                await self._wait_slot()
                self._take_slot()
                holding_slot = True
                if held.lost:
                    return
                counts = await self._settle(
                    _S_HOLD, [self.stream_key], [self._group, self._consumer, "attempt", entry]
                )
                if not counts or not int(counts[0]):
                    if not held.lost:
                        held.lost = True
                        self.stats.lost_ownership += 1
                    return
                attempts = int(counts[0])
                self.stats.retries += 1
        finally:
            self._held.pop(entry, None)
            if holding_slot:
                self._give_slot()

    async def _ack(self, entry: str) -> bool:
        """Acknowledge and delete a handled entry, batched with the others of this loop turn
        (one round trip for many); ``False`` if Redis failed (the entry stays pending)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks.append((entry, future))
        if len(self._acks) == 1:
            task = asyncio.get_running_loop().create_task(self._flush_acks())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _flush_acks(self) -> None:
        done: Any = None
        batch: list[tuple[str, asyncio.Future[bool]]] = []
        try:
            await asyncio.sleep(0)  # let the other handlers finishing this turn join the batch
            batch, self._acks = self._acks, []
            ids = [entry for entry, _ in batch]
            done = await self._settle(_S_ACK, [self.stream_key], [self._group, *ids])
        finally:
            for _, future in batch:
                if not future.done():
                    future.set_result(done is not None)

    async def _settle(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """Run a script on an entry; on a Redis failure the entry stays pending (another
        consumer takes it after ``claim_idle``) and ``None`` is returned."""
        try:
            return await script(self._connections.get(), keys, args)
        except (*REDIS_ERRORS, StoreUnavailableError) as exc:
            self._consumer_error("acknowledge", exc, _ERROR_PAUSE_MIN)
            return None


class RedisWebhookDedup:
    """Fleet-wide duplicate suppression without the queue (hand-off or memory mode).

    Pass it as ``WebhookReceiver(secret, on_event, dedup=dedup)``. An event's ``(type, id)``
    is claimed with a set-if-absent; in hand-off mode the claim is an "in progress" mark that
    expires after the answer deadline (plus a grace), is made permanent (``ttl`` seconds) when
    the handler succeeded and deleted when it failed, so a failed event is never suppressed.
    Keys: ``{prefix}:{<name>}:seen:<h>``, the same as the queue's. Made like the queue:
    :meth:`from_url` or a client you made (bound to the event loop and process that first use
    it).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        url: str | None = None,
        name: str = "default",
        prefix: str = "apimw:webhooks",
        ttl: float = DEFAULT_DEDUP_TTL,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        **redis_kwargs: Any,
    ) -> None:
        _check_source("RedisWebhookDedup", client, url, redis_kwargs)
        self._name = _check_name(name, "name")
        self._prefix = _check_name(prefix, "prefix")
        self._ttl = seconds("ttl", ttl)
        self._base = f"{self._prefix}:{{{self._name}}}"
        socket_timeout = seconds("socket_timeout", socket_timeout)
        self._connections = _Connections(
            "RedisWebhookDedup", client, url, socket_timeout, redis_kwargs
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisWebhookDedup:
        """A de-duplicator on the Redis server at ``url``."""
        return cls(url=url, **options)

    def seen_key(self, event_type: str, event_id: str) -> str:
        """The Redis key remembering ``(event_type, event_id)``."""
        return _seen_key(self._base, (event_type, event_id))

    async def claim(self, key: tuple[str, str], hold: float | None) -> DedupState:
        value, ttl = ("d", self._ttl) if hold is None else ("p", hold)
        with _unavailable("dedup claim"):
            state = await _S_DEDUP_CLAIM(
                self._connections.get(), [_seen_key(self._base, key)], [value, _ms(ttl)]
            )
        text = as_text(state)
        return "new" if text == "new" else "busy" if text == "busy" else "done"

    async def confirm(self, key: tuple[str, str]) -> None:
        with _unavailable("dedup confirm"):
            await self._connections.get().set(_seen_key(self._base, key), "d", px=_ms(self._ttl))

    async def release(self, key: tuple[str, str]) -> None:
        with _unavailable("dedup release"):
            await _S_DEDUP_RELEASE(self._connections.get(), [_seen_key(self._base, key)], [])

    async def aclose(self) -> None:
        """Close the running loop's own client (a client you passed stays open)."""
        await self._connections.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisWebhookDedup(server={self._connections.server!r}, name={self._name!r}, "
            f"ttl={self._ttl:g})"
        )


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) pairs of an XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    found: list[tuple[Any, Any]] = []
    for _stream, entries in streams:
        if entries and isinstance(entries[0], list):  # RESP3 wraps the list once more
            entries = entries[0]
        for entry in entries or ():
            if entry is None:
                continue
            entry_id, fields = entry[0], entry[1]
            if fields is not None:
                found.append((entry_id, fields))
    return found
