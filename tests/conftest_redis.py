"""Fixtures for tests against a real redis-server (hooked into tests/conftest.py).

``redis_url``: ``$APIMW_TEST_REDIS_URL`` (``scripts/test`` starts a server and sets it), else a
server started here for the session if ``redis-server`` is on PATH, else the test is skipped.
``redis_server``: a private server the test may stop, kill and restart. ``redis_prefix``: a
key prefix unique to the test, whose keys are deleted afterwards.

``redis_cluster_url``: ``$APIMW_TEST_REDIS_CLUSTER_URL`` (``scripts/test`` starts a 3-node
cluster and sets it), else a cluster started here if ``redis-server`` and ``redis-cli`` are on
PATH, else skipped, unless ``APIMW_REDIS_REQUIRED`` is set (``scripts/test`` sets it): then a
missing server fails the test. ``redis_target``: parametrized over the single server and the
cluster, for tests of every Redis part on both.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from .redis_server import RedisClusterServer, RedisServer, redis_binary

ENV_REDIS_URL = "APIMW_TEST_REDIS_URL"
ENV_REDIS_CLUSTER_URL = "APIMW_TEST_REDIS_CLUSTER_URL"
ENV_REDIS_REQUIRED = "APIMW_REDIS_REQUIRED"

_NO_REDIS = (
    f"no Redis for this test: set {ENV_REDIS_URL}=redis://host:port/db or put redis-server on "
    "PATH (scripts/test installs and starts one)"
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install '.[redis]')")
    url = os.environ.get(ENV_REDIS_URL)
    if url:
        yield url
        return
    if redis_binary() is None:
        _skip_or_fail(_NO_REDIS)
    with RedisServer() as server:
        yield server.url


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(ENV_REDIS_REQUIRED):
        pytest.fail(f"{reason} ({ENV_REDIS_REQUIRED} is set)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install '.[redis]')")
    url = os.environ.get(ENV_REDIS_CLUSTER_URL)
    if url:
        yield url
        return
    if redis_binary() is None or shutil.which("redis-cli") is None:
        _skip_or_fail(
            f"no Redis Cluster for this test: set {ENV_REDIS_CLUSTER_URL}=redis://host:port or "
            "put redis-server and redis-cli on PATH (scripts/test starts a 3-node cluster)"
        )
    with RedisClusterServer() as cluster:
        yield cluster.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install '.[redis]')")
    if redis_binary() is None:
        _skip_or_fail("redis-server is not on PATH (needed to stop and restart a private server)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"apimw-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@attrs.frozen
class RedisTarget:
    """A Redis deployment the Redis parts are tested against (a single server or a cluster)
    and a key prefix unique to the test."""

    kind: str
    url: str
    prefix: str

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def client(self, **options: Any) -> Any:
        """A new ``redis.asyncio`` client (``RedisCluster`` for the cluster), bound to the
        running loop once used."""
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(self.url, **options)
        import redis.asyncio

        return redis.asyncio.Redis.from_url(self.url, **options)

    def sync_client(self) -> Any:
        """A blocking client for checks from the test (``RedisCluster`` for the cluster)."""
        if self.cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(self.url, socket_timeout=2)
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    """The single server, then the 3-node cluster, with a prefix whose keys are deleted
    afterwards."""
    import redis

    url = request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url")
    target = RedisTarget(request.param, url, f"apimw-test-{uuid.uuid4().hex[:12]}")
    yield target
    client = target.sync_client()
    try:
        for key in list(client.scan_iter(match=f"{target.prefix}:*", count=500)):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        if target.cluster:
            # SCAN on a cluster holds a connection per node that close() leaves open.
            client.disconnect_connection_pools()
        client.close()
