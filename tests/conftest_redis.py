"""Fixtures for tests against a real redis-server (hooked into tests/conftest.py).

``redis_url``: ``$APIMW_TEST_REDIS_URL`` (``scripts/test`` starts a server and sets it), else a
server started here for the session if ``redis-server`` is on PATH, else the test is skipped.
``redis_server``: a private server the test may stop, kill and restart. ``redis_prefix``: a
key prefix unique to the test, whose keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from .redis_server import RedisServer, redis_binary

ENV_REDIS_URL = "APIMW_TEST_REDIS_URL"

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
        pytest.skip(_NO_REDIS)
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install '.[redis]')")
    if redis_binary() is None:
        pytest.skip("redis-server is not on PATH (needed to stop and restart a private server)")
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
