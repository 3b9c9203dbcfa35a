"""State kept per event loop, for objects used from more than one loop.

aiohttp sessions, redis-py clients and asyncio tasks belong to the loop that made them, yet one
:class:`~apimw_async.Client` may serve repeated :func:`asyncio.run` calls, threads with their
own loops, or a sync wrapper that makes a loop per call. :class:`PerLoop` is the one registry
for such state (the session provider, the token manager and the Redis store use it):

- one value per running loop, made on first use, under a thread lock;
- closed inside its loop when that loop shuts down its async generators (``asyncio.run``,
  ``asyncio.Runner``, pytest-asyncio), or at once by :meth:`PerLoop.aclose`;
- the values of loops found closed (``new_event_loop()`` / ``run_until_complete()`` /
  ``close()``, which never shuts anything down) are abandoned when the next loop registers
  (their pending tasks dropped quietly, the sockets still open on that loop closed), so
  neither those loops nor their sockets pile up;
- in a forked child every value is orphaned: kept referenced for the life of the child and
  never used, closed or collected there, because its sockets and pipes are the parent's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["PerLoop", "abandon_task", "on_loop_shutdown", "release_transport"]

T = TypeVar("T")


def _drive_once(agen: AsyncGenerator[None, None]) -> None:
    # Start the generator synchronously: it reaches its first ``yield`` without awaiting, and
    # the first iteration registers it with the running loop's async-generator hooks.
    step = agen.asend(None)
    with contextlib.suppress(StopIteration):
        step.send(None)


def on_loop_shutdown(callback: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Run ``callback`` when the running loop shuts down its async generators.

    ``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio call ``loop.shutdown_asyncgens()``
    before closing the loop; a suspended async generator registered with the loop is then
    closed *inside* the loop, which is the last moment an owned session can be closed cleanly.
    Keep a reference to the returned generator; ``await gen.aclose()`` runs the callback early.
    """

    async def hook() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await callback()

    agen = hook()
    _drive_once(agen)
    return agen


class _Entry(Generic[T]):
    __slots__ = ("abandoned", "closer", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self.closer: AsyncGenerator[None, None] | None = None
        self.abandoned = False


class PerLoop(Generic[T]):
    """One value per event loop: made by ``create()`` in the running loop on first use.

    ``close(value)`` runs inside the value's loop when that loop shuts down (or on
    :meth:`aclose`); ``abandon(value)`` runs synchronously for a value whose loop was closed
    without shutting down (it must release what it can without that loop). ``after_fork()``
    runs in a forked child after the parent's values were orphaned.
    """

    def __init__(
        self,
        create: Callable[[], T],
        *,
        close: Callable[[T], Awaitable[None]] | None = None,
        abandon: Callable[[T], None] | None = None,
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        self._create = create
        self._close = close
        self._abandon = abandon
        self._after_fork = after_fork
        # A plain dict, not a WeakKeyDictionary: the values (sessions, clients, tasks) hold
        # their loop strongly, so a weak key would never drop. Closed loops are pruned instead.
        self._entries: dict[asyncio.AbstractEventLoop, _Entry[T]] = {}
        self._lock = threading.Lock()
        # The latest (loop, value) handed out: skips the dict lookup on the hot path. One
        # tuple, assigned at once: a thread running another loop reads both or neither.
        self._last: tuple[asyncio.AbstractEventLoop, T] | None = None
        _REGISTRIES.add(self)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self) -> T:
        """The running loop's value, made on first use."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            return last[1]
        entry = self._entries.get(loop)
        if entry is None:
            dropped: list[tuple[asyncio.AbstractEventLoop, _Entry[T]]] = []
            with self._lock:
                entry = self._entries.get(loop)
                if entry is None:
                    dropped = self._take_closed()
                    entry = self._add(loop)
            # Outside the lock: abandoning runs other libraries' clean-up code.
            for closed, old in dropped:
                self._drop(closed, old)
        self._last = (loop, entry.value)
        return entry.value

    def find(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """``loop``'s value, if it has one (never makes one)."""
        entry = self._entries.get(loop)
        return None if entry is None else entry.value

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """A snapshot of ``(loop, value)`` pairs."""
        with self._lock:
            return [(loop, entry.value) for loop, entry in self._entries.items()]

    def _add(self, loop: asyncio.AbstractEventLoop) -> _Entry[T]:
        entry: _Entry[T] = _Entry(self._create())

        async def close() -> None:
            if entry.abandoned:
                return
            with self._lock:
                if self._entries.get(loop) is entry:
                    del self._entries[loop]
            last = self._last
            if last is not None and last[0] is loop:
                self._last = None
            entry.abandoned = True
            if self._close is not None:
                await self._close(entry.value)

        entry.closer = on_loop_shutdown(close)
        self._entries[loop] = entry
        return entry

    def _take_closed(self) -> list[tuple[asyncio.AbstractEventLoop, _Entry[T]]]:
        # Under the lock. A closed loop never runs its closer: its value is released instead.
        closed = [loop for loop in self._entries if loop.is_closed()]
        return [(loop, self._entries.pop(loop)) for loop in closed]

    def _drop(self, loop: asyncio.AbstractEventLoop, entry: _Entry[T]) -> None:
        entry.abandoned = True
        # (the closer's finalizer does nothing for a closed loop: its loop cannot run it)
        entry.closer = None
        last = self._last
        if last is not None and last[0] is loop:
            self._last = None
        if self._abandon is not None:
            self._abandon(entry.value)
        _abandon_closed_loop(loop)

    async def aclose(self) -> None:
        """Close the running loop's value now; abandon those of closed loops.

        Values of loops still running elsewhere (other threads) are closed there, when those
        loops shut down.
        """
        loop = asyncio.get_running_loop()
        self._last = None
        with self._lock:
            entry = self._entries.pop(loop, None)
            dropped = self._take_closed()
        for closed, old in dropped:
            self._drop(closed, old)
        if entry is not None and entry.closer is not None:
            await entry.closer.aclose()

    def _forget_after_fork(self) -> None:
        _ORPHANED.extend(self._entries.values())
        self._entries = {}
        self._last = None
        # A lock held by another parent thread at fork time would never be released here.
        self._lock = threading.Lock()
        if self._after_fork is not None:
            self._after_fork()


def abandon_task(task: asyncio.Task[Any] | None) -> None:
    """Forget a task left pending on a closed loop, quietly.

    Its loop can never run it again. Collected as it is, its coroutine would be closed by the
    garbage collector (where library clean-up code that needs a running loop raises, as an
    "exception ignored") and asyncio would log "Task was destroyed but it is pending".
    """
    if task is None or task.done():
        return
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        task.get_coro().close()


#: Modules whose tasks, left pending on a closed loop, are ours to drop: our own, and those of
#: the libraries our per-loop values drive (e.g. the task ``asyncio.wait_for`` makes around a
#: redis-py command before Python 3.12). Other tasks are the application's business.
_OWN_TASK_MODULES = ("apimw_async.", "aiohttp.", "redis.")


def _abandon_closed_loop(loop: asyncio.AbstractEventLoop) -> None:
    """What a closed loop still holds that our values started: pending tasks of our modules
    (or of the libraries they drive), and every socket still open on it (a connection whose
    owner's clean-up could not run without the loop can never be used again)."""
    for task in list(asyncio.all_tasks(loop)):
        frame = getattr(task.get_coro(), "cr_frame", None)
        module = "" if frame is None else str(frame.f_globals.get("__name__", ""))
        if (module + ".").startswith(_OWN_TASK_MODULES):
            abandon_task(task)
    for transport in list(getattr(loop, "_transports", {}).values()):
        release_transport(transport)


def release_transport(transport: Any) -> None:
    """Close the socket of a transport whose loop is closed (so ``transport.close()``, which
    schedules on that loop, cannot). Selector transports only; others are left to the
    collector."""
    if transport is None:
        return
    with contextlib.suppress(Exception):
        transport.close()  # marks it closing; fails on the closed loop before the socket
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
        # (its finalizer would warn about an unclosed transport otherwise)
        transport._sock = None


_REGISTRIES: weakref.WeakSet[PerLoop[Any]] = weakref.WeakSet()
# The parent's per-loop values, in a forked child: referenced for the life of the child so that
# no finalizer closes a socket, a pipe or a connector the parent still uses.
_ORPHANED: list[_Entry[Any]] = []


def _after_fork_in_child() -> None:
    for registry in list(_REGISTRIES):
        registry._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
