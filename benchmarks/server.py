"""The fake APIMW server for a benchmark run: in this process, or in a process of its own.

On a 2-core machine a server sharing the client's event loop takes CPU from the client being
measured, which pulls every strategy's numbers towards the server's cost and hides differences.
:class:`ProcessServers` runs :class:`~apimw_async.testing.FakeAPIMW` in a separate process with
its own event loop (one fresh server per run, its port passed back over a pipe);
:class:`InProcessServers` runs it in the client's loop. Both hand out a :class:`Server` with the
same small interface, so workloads do not care which one they got.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import time
from typing import Any, Protocol

from apimw_async import Credentials
from apimw_async.testing import FakeAPIMW

__all__ = ["InProcessServers", "ProcessServers", "Server", "ServerFactory"]


class Server(Protocol):
    """One running fake server."""

    base_url: str
    credentials: Credentials

    def stats(self) -> dict[str, Any]:
        """The fake's counters (``FakeStats.as_dict()``) plus ``cpu_s``, the server's CPU time."""

    def configure(self, **attributes: Any) -> None:
        """Set attributes of the fake (``token_lifetime``, ``token_latency``, ...)."""

    def set_rate(self, endpoint: str, **rates: Any) -> None:
        """``fake.faults.set_rate(endpoint, **rates)``."""

    def add_fault(self, endpoint: str, kind: str = "status", **options: Any) -> None:
        """``fake.faults.add(endpoint, kind, **options)``."""

    async def stop(self) -> None:
        """Stop the server (the factory stays usable)."""


class ServerFactory(Protocol):
    """Starts one fresh fake server per benchmark run."""

    where: str

    async def start(self, **options: Any) -> Server:
        """A new running fake server built with ``FakeAPIMW(**options)``."""

    def close(self) -> None:
        """Release the factory (stops a server process)."""


# --- in this process ----------------------------------------------------------------------------


class _LocalServer:
    def __init__(self, fake: FakeAPIMW) -> None:
        self._fake = fake
        self.base_url = fake.base_url
        self.credentials = fake.credentials

    def stats(self) -> dict[str, Any]:
        data = self._fake.stats.as_dict()
        # Same process: the server's CPU time cannot be told apart from the client's.
        data["cpu_s"] = float("nan")
        return data

    def configure(self, **attributes: Any) -> None:
        for name, value in attributes.items():
            setattr(self._fake, name, value)

    def set_rate(self, endpoint: str, **rates: Any) -> None:
        self._fake.faults.set_rate(endpoint, **rates)

    def add_fault(self, endpoint: str, kind: str = "status", **options: Any) -> None:
        self._fake.faults.add(endpoint, kind, **options)

    async def stop(self) -> None:
        await self._fake.close()


class InProcessServers:
    """Fake servers in the benchmark's own event loop."""

    where = "in-process (same event loop as the clients)"

    async def start(self, **options: Any) -> Server:
        fake = FakeAPIMW(**options)
        await fake.start()
        return _LocalServer(fake)

    def close(self) -> None:
        pass


# --- in a process of its own --------------------------------------------------------------------


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Entry point of the server process: obey commands from the pipe until ``exit``."""
    asyncio.run(_serve_async(conn))


async def _serve_async(conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    fake: FakeAPIMW | None = None
    while True:
        command, payload = await loop.run_in_executor(None, conn.recv)
        try:
            reply: Any = None
            if command == "start":
                fake = FakeAPIMW(**payload)
                await fake.start()
                creds = fake.credentials
                reply = (fake.base_url, creds.api_key, creds.api_secret)
            elif command == "stats":
                assert fake is not None
                reply = fake.stats.as_dict()
                reply["cpu_s"] = time.process_time()
            elif command == "configure":
                assert fake is not None
                for name, value in payload.items():
                    setattr(fake, name, value)
            elif command == "set_rate":
                assert fake is not None
                endpoint, rates = payload
                fake.faults.set_rate(endpoint, **rates)
            elif command == "add_fault":
                assert fake is not None
                endpoint, kind, options = payload
                fake.faults.add(endpoint, kind, **options)
            elif command == "stop":
                if fake is not None:
                    await fake.close()
                    fake = None
            elif command == "exit":
                if fake is not None:
                    await fake.close()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", reply))
        except Exception as exc:  # reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _RemoteServer:
    def __init__(self, owner: ProcessServers, base_url: str, credentials: Credentials) -> None:
        self._owner = owner
        self.base_url = base_url
        self.credentials = credentials

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._owner.call("stats")
        return result

    def configure(self, **attributes: Any) -> None:
        self._owner.call("configure", attributes)

    def set_rate(self, endpoint: str, **rates: Any) -> None:
        self._owner.call("set_rate", (endpoint, rates))

    def add_fault(self, endpoint: str, kind: str = "status", **options: Any) -> None:
        self._owner.call("add_fault", (endpoint, kind, options))

    async def stop(self) -> None:
        self._owner.call("stop")


class ProcessServers:
    """Fake servers in one long-lived child process with its own event loop.

    Commands go over a pipe and are answered between runs (and once at the start and end of a
    timed phase, for the counters), never per request.
    """

    where = "separate process (own event loop, own core)"

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child,), name="apimw-fake-server", daemon=True
        )
        self._process.start()
        child.close()

    def call(self, command: str, payload: Any = None) -> Any:
        self._conn.send((command, payload))
        status, reply = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"fake server process: {reply}")
        return reply

    async def start(self, **options: Any) -> Server:
        base_url, api_key, api_secret = self.call("start", options)
        return _RemoteServer(self, base_url, Credentials(api_key, api_secret))

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError, EOFError, RuntimeError):
                self.call("exit")
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
        self._conn.close()
