"""A throw-away ``redis-server`` process on a free loopback port, for tests.

Used by the fixtures in ``tests/conftest_redis.py`` (a shared server when
``APIMW_TEST_REDIS_URL`` is not set, and private servers that a test may stop and restart) and
by ``examples/fleet_workers.py``. Nothing is persisted (``--save ''``, no AOF).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time

__all__ = ["RedisServer", "redis_binary"]


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


class RedisServer:
    """``redis-server`` as a child process: :meth:`start`, :meth:`stop`, :meth:`restart`.

    The port is chosen once and kept across restarts, so clients reconnect to the same URL.
    """

    def __init__(self, binary: str | None = None, *, port: int | None = None) -> None:
        found = binary or redis_binary()
        if found is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = found
        self.port = port or _free_port()
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
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while time.monotonic() < deadline:
                if _ping(self.port):
                    return
                if self.process.poll() is not None:
                    break  # exited (port still held by the previous instance?): try again
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
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
