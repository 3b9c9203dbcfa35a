"""A throw-away ``redis-server`` process on a free loopback port, for tests.

Used by the fixtures in ``tests/conftest_redis.py`` (a shared server when
``APIMW_TEST_REDIS_URL`` is not set, private servers that a test may stop and restart, and a
3-node cluster when ``APIMW_TEST_REDIS_CLUSTER_URL`` is not set) and by
``examples/fleet_workers.py``. Nothing is persisted (``--save ''``, no AOF).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

__all__ = [
    "RedisClusterServer",
    "RedisSentinel",
    "RedisServer",
    "cluster_ports",
    "redis_binary",
]


def redis_binary() -> str | None:
    """Path of ``redis-server`` on PATH, or ``None``."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _server_pid(port: int, timeout: float = 2.0) -> int | None:
    """The process id of the redis-server answering on ``port`` (``INFO server``), if any."""
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"INFO server\r\n")
            while not re.search(rb"\r\nprocess_id:\d+\r\n", data):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    match = re.search(rb"\r\nprocess_id:(\d+)\r\n", data)
    return int(match.group(1)) if match else None


def cluster_ports(n: int = 3) -> list[int]:
    """``n`` free loopback ports whose cluster bus ports (port + 10000) are free too."""
    import random

    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        port = rng.randrange(20000, 50000)
        if port in ports or port + 10000 in ports:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        ports.append(port)
    return ports


def _cluster_ok(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in sock.recv(4096)
    except OSError:
        return False


class RedisServer:
    """``redis-server`` as a child process: :meth:`start`, :meth:`stop`, :meth:`restart`.

    The port is chosen once and kept across restarts, so clients reconnect to the same URL.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = binary or redis_binary()
        if found is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = found
        self.port = port or _free_port()
        # A port we picked may be taken by someone else before our server binds it: then we
        # pick another, until the server has run once (clients keep its URL across restarts).
        self._may_move = port is None
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed argument list
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # exited: the port is taken (by our previous instance, or another)
                # The answer must come from our process: the free port we picked may have been
                # taken by another listener (another test's server) in the meantime, and a test
                # on someone else's server sees foreign keys, commands and restarts.
                if _ping(self.port) and _server_pid(self.port) == self.process.pid:
                    self._may_move = False
                    return
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            if self._may_move:
                self.port = _free_port()
            else:
                time.sleep(0.1)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill=True``) and wait until it is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port (an empty database: nothing is persisted)."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


class RedisClusterServer:
    """A 3-node Redis Cluster (no replicas) on free loopback ports, as ``scripts/test`` starts
    one: ``redis-server --cluster-enabled yes`` ×3, then ``redis-cli --cluster create``."""

    def __init__(self, nodes: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None or redis_binary() is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for a cluster")
        self.cli = cli
        self.dir = tempfile.TemporaryDirectory(prefix="apimw-redis-cluster-")
        self.servers = [
            RedisServer(
                port=port,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"{self.dir.name}/nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--dir",
                    self.dir.name,
                ],
            )
            for port in cluster_ports(nodes)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        for server in self.servers:
            server.start()
        subprocess.run(  # noqa: S603 - a fixed argument list
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{server.port}" for server in self.servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while not all(_cluster_ok(server.port) for server in self.servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.dir.cleanup()

    def __enter__(self) -> RedisClusterServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


class RedisSentinel:
    """A private master and one Sentinel watching it as ``mymaster`` (quorum 1)."""

    MASTER = "mymaster"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.port = _free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="apimw-redis-sentinel-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.master.start()
        config = f"{self.dir.name}/sentinel.conf"
        with open(config, "w", encoding="utf-8") as file:
            file.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir.name}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 1\n"
            )
        assert self.master.binary is not None
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argument list
            [self.master.binary, config, "--sentinel", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis sentinel did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        self.master.stop()
        self.dir.cleanup()

    def __enter__(self) -> RedisSentinel:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
