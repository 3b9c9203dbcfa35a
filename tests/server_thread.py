"""A fake APIMW server in its own thread and event loop, for tests that run their own loops
(repeated ``asyncio.run``, ``new_event_loop``, threads, fork)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from apimw_async.testing import FakeAPIMW

__all__ = ["ServerThread"]


class ServerThread:
    """A fake server running in its own thread and event loop."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.fake: FakeAPIMW

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.fake = FakeAPIMW(**self.options)
        self.loop.run_until_complete(self.fake.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.fake.close())
        self.loop.close()

    def __enter__(self) -> FakeAPIMW:
        self.thread.start()
        self.ready.wait(30)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
