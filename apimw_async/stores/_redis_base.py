"""What every Redis-backed part shares: connection options, the client made from a URL, the
mapping of Redis and socket failures to :class:`~apimw_async.StoreUnavailableError`, closing
and abandoning clients, and the check of a client you pass.

Used by :mod:`.redis` (the token store), :mod:`._redis_limiter` (the rate limiter) and
:mod:`apimw_async.webhooks.redis` (the webhook queue and dedup), so that they fail, time out,
close and describe their server alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .._errors import ConfigurationError, StoreUnavailableError
from .._loops import release_transport

#: What an outage looks like from redis-py: its own errors, socket errors, timeouts.
REDIS_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)


@contextlib.contextmanager
def unavailable(component: str, what: str) -> Iterator[None]:
    """Turn any Redis or socket failure into :class:`StoreUnavailableError`, naming the
    ``component`` ("redis token store") and the operation."""
    try:
        yield
    except REDIS_ERRORS as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise StoreUnavailableError(
            f"{component}: {what} failed ({type(exc).__name__}{': ' if detail else ''}{detail})"
        ) from exc


def check_prefix(prefix: object) -> str:
    """``prefix`` if it can start Redis keys with a hash tag after it, else
    :class:`ConfigurationError`."""
    if not isinstance(prefix, str) or not prefix or any(c.isspace() or c in "{}" for c in prefix):
        raise ConfigurationError("prefix must be a non-empty string without whitespace or braces")
    return prefix


def check_key(key: str, what: str) -> str:
    """``key`` if it can be a hash tag: a short string, no whitespace or braces, and a hash
    of the API key rather than the key itself (which would put it in Redis)."""
    if (
        not isinstance(key, str)
        or not key
        or len(key) > 200
        or any(c.isspace() or c in "{}" for c in key)
    ):
        raise ValueError(f"a {what} key is a short non-empty string without whitespace or braces")
    if key.startswith(("ak_", "sk_")):
        raise ValueError(f"a {what} key must be a hash of the API key, never the key itself")
    return key


def connection_options(
    *,
    socket_timeout: float,
    connect_timeout: float,
    pool_timeout: float,
    max_connections: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Keyword arguments of :meth:`BlockingConnectionPool.from_url`: ``extra`` (the user's)
    override ours, except ``decode_responses``, which is always off."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        # One immediate retry on a new connection (a pooled connection that died with a
        # restarted server), none on timeouts: an outage must surface fast.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "max_connections": max_connections,
        "timeout": pool_timeout,  # waiting for a free pool connection
        **extra,
        "decode_responses": False,
    }


def client_from_url(url: str, options: dict[str, Any]) -> aioredis.Redis:
    """A client on a blocking pool: a burst of commands queues for a connection (briefly)
    instead of failing with "Too many connections", which would read as an outage."""
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return aioredis.Redis(connection_pool=pool)


def new_client(
    component: str, url: str | None, factory: Callable[[], Any] | None, options: dict[str, Any]
) -> Any:
    """A client of our own for the running loop: ``factory()``, else one on ``url`` with
    ``options``; a failure to make one is :class:`StoreUnavailableError`."""
    try:
        if factory is not None:
            return factory()
        assert url is not None
        return client_from_url(url, options)
    except (*REDIS_ERRORS, ValueError, TypeError) as exc:
        raise StoreUnavailableError(
            f"{component}: cannot create a client ({type(exc).__name__})"
        ) from exc


def check_url(url: object) -> str:
    """``url`` if redis-py can parse it, else :class:`ConfigurationError`."""
    if not isinstance(url, str):
        raise ConfigurationError("url must be a Redis URL string")
    try:
        aioredis.connection.parse_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"not a Redis URL ({type(exc).__name__}); expected redis://, rediss:// or unix://"
        ) from None
    return url


def describe_url(url: str) -> str:
    """``scheme://host:port/db`` (or the socket path) of a Redis URL, without credentials."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        port = parts.port or 6379
    except ValueError:
        return "<unparsable url>"
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{db}"


def ms(seconds: float) -> int:
    """Whole milliseconds for PX/PEXPIRE, at least 1 (0 is an error there)."""
    return max(1, int(seconds * 1000))


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


async def close_quietly(resource: Any) -> None:
    # ``aclose`` since redis-py 5.0.1, ``close`` before; a close must never raise here.
    close = getattr(resource, "aclose", None) or resource.close
    with contextlib.suppress(Exception):
        await close()


async def close_client(client: Any) -> None:
    """Close a client we made, and its pool's connections (closing a client made on a pool
    does not close them)."""
    await close_quietly(client)
    with contextlib.suppress(Exception):
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()


def pool_connections(client: Any) -> list[Any]:
    """The connections of ``client``'s pool (none for a RedisCluster: it has no single pool)."""
    pool: Any = getattr(client, "connection_pool", None)
    return [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]


def writer_transport(connection: Any) -> Any:
    return getattr(getattr(connection, "_writer", None), "transport", None)


def drop_connections(connections: list[Any], transports: list[Any]) -> None:
    """Release the sockets of connections whose loop is gone (no await possible), given
    their transports (taken beforehand when closing a task could forget a writer)."""
    for connection, transport in zip(connections, transports, strict=True):
        release_transport(transport)
        if connection is not None:
            connection._writer = connection._reader = None


def bind(
    owner: Any,
    loop: asyncio.AbstractEventLoop,
    what: str,
    remedy: str = "pass client_factory= (called in each event loop and process)",
) -> None:
    """Bind ``owner``'s user-made client to ``loop`` and this process on first use; refuse
    any other (its connections belong to them) with a :class:`ConfigurationError` that
    ends with ``remedy``."""
    bound = owner._bound
    if bound is None:
        owner._bound = (os.getpid(), weakref.ref(loop))
        return
    pid, loop_ref = bound
    if pid != os.getpid():
        raise ConfigurationError(
            f"{what}: the Redis client you passed was used in the parent process and cannot "
            f"be used after fork; {remedy}"
        )
    if loop_ref() is not loop:
        raise ConfigurationError(
            f"{what}: the Redis client you passed is bound to the event loop that first used "
            f"it; {remedy}"
        )
