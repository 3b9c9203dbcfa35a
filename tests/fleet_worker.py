"""One process of a test fleet: a Client sharing its token through Redis, many tasks using it.

Run by tests/test_fleet.py (``multiprocessing`` spawn or fork) and examples/fleet_workers.py.
The result (counters, errors, the access tokens seen) is written as JSON to ``result_path``.
:func:`revocation_main` is a second process for tests/test_fleet_coordination.py, driven step by
step through a pipe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import traceback
from typing import Any

from apimw_async import Client, Credentials, FakeClock, TokenManager
from apimw_async._config import STORE_CHECK_INTERVAL
from apimw_async.stores.redis import RedisTokenStore

__all__ = ["fork_main", "revocation_main", "run_worker", "use_client", "worker_main"]

#: Real seconds a driven worker waits for its next step or for what a step triggers.
STEP_TIMEOUT = 60.0


async def use_client(
    client: Client,
    *,
    tasks: int,
    api_tasks: int,
    duration: float,
    result: dict[str, Any],
) -> None:
    """``tasks`` tasks calling ``get_token()`` (``api_tasks`` of them also ``auth.me()``,
    which the fake server checks) until ``duration`` has passed; at least once each."""
    manager: TokenManager = client.tokens
    errors: list[str] = []
    tokens: set[str] = set()
    counts = {"token_uses": 0, "api_calls": 0}
    end = time.monotonic() + duration

    async def task(index: int) -> None:
        rng = random.Random(index * 7919 + os.getpid())
        api = index < api_tasks
        while True:
            try:
                token = await manager.get_token()
                tokens.add(token.fingerprint)
                counts["token_uses"] += 1
                if api:
                    await client.auth.me()
                    counts["api_calls"] += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            if time.monotonic() >= end:
                return
            await asyncio.sleep(rng.uniform(0.15, 0.35) if api else rng.uniform(0.01, 0.05))

    await asyncio.gather(*(task(i) for i in range(tasks)))
    result.update(
        errors=errors[:20],
        error_count=len(errors),
        tokens=sorted(tokens),
        stats=manager.stats.as_dict(),
        **counts,
    )


async def run_worker(config: dict[str, Any], result: dict[str, Any]) -> None:
    """Make a store and a client from ``config`` and use them (see :func:`use_client`)."""
    store = RedisTokenStore.from_url(config["redis_url"], prefix=config["prefix"])
    client = Client(
        Credentials(config["api_key"], config["api_secret"]),
        base_url=config["base_url"],
        store=store,
        **config.get("client_options", {}),
    )
    try:
        async with client:
            await use_client(
                client,
                tasks=config.get("tasks", 200),
                api_tasks=config.get("api_tasks", 10),
                duration=config.get("duration", 0.0),
                result=result,
            )
    finally:
        await store.aclose()


def worker_main(config: dict[str, Any], result_path: str, barrier: Any = None) -> None:
    """Process entry point: wait at ``barrier`` (so the fleet starts together), run, report."""
    result: dict[str, Any] = {"pid": os.getpid(), "ok": False}
    try:
        if barrier is not None:
            barrier.wait(120)
        asyncio.run(run_worker(config, result))
        result["ok"] = True
    except BaseException:
        result["crash"] = traceback.format_exc()[-4000:]
        raise
    finally:
        with open(result_path, "w", encoding="utf-8") as out:
            json.dump(result, out)


def fork_main(client: Client, config: dict[str, Any], result_path: str) -> None:
    """Entry point of a *forked* child: keep using the client made by the parent."""
    result: dict[str, Any] = {"pid": os.getpid(), "ok": False}
    try:

        async def run() -> None:
            await use_client(
                client,
                tasks=config.get("tasks", 200),
                api_tasks=config.get("api_tasks", 10),
                duration=config.get("duration", 0.0),
                result=result,
            )

        asyncio.run(run())
        result["ok"] = True
    except BaseException:
        result["crash"] = traceback.format_exc()[-4000:]
        raise
    finally:
        with open(result_path, "w", encoding="utf-8") as out:
            json.dump(result, out)


class _RevocationSeen(logging.Handler):
    """Sets ``event`` when the token manager logs that another process revoked its token."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.INFO)
        self._event = event
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if "revoked by another process" in record.getMessage():
            self._loop.call_soon_threadsafe(self._event.set)


async def _next_step(conn: Any) -> Any:
    """The parent's next message, read without blocking the event loop."""
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, conn.poll, STEP_TIMEOUT):
        raise TimeoutError(f"no message from the test within {STEP_TIMEOUT:g} s")
    return conn.recv()


async def _revocation_steps(config: dict[str, Any], conn: Any) -> None:
    # The worker's own fake clock (same wall-clock origin as the test's) lets the test move
    # it to the next store check instead of waiting STORE_CHECK_INTERVAL of real time.
    clock = FakeClock()
    seen = asyncio.Event()
    handler = _RevocationSeen(seen)
    token_log = logging.getLogger("apimw_async.tokens")
    token_log.addHandler(handler)
    token_log.setLevel(logging.INFO)
    store = RedisTokenStore.from_url(config["redis_url"], prefix=config["prefix"])
    client = Client(
        Credentials(config["api_key"], config["api_secret"]),
        base_url=config["base_url"],
        store=store,
        clock=clock,
    )
    try:
        async with client:
            # Step 1: obtain the pair (it goes to the store) and use it; the first look at
            # the store happens now, so the next one is due STORE_CHECK_INTERVAL later.
            await client.auth.me()
            await client.tokens.get_token()
            conn.send(("holding", None))
            assert await _next_step(conn) == "revoked"
            # Step 2: the parent revoked the pair. Move to the next store check (the call
            # starts it and returns the token held, which is not sent), wait until this
            # process has seen the revocation, then use the client again.
            clock.advance(STORE_CHECK_INTERVAL)
            await client.tokens.get_token()
            await asyncio.wait_for(seen.wait(), STEP_TIMEOUT)
            calls = config.get("calls_after", 10)
            await asyncio.gather(*(client.auth.me() for _ in range(calls)))
            conn.send(("done", client.tokens.stats.as_dict()))
    finally:
        token_log.removeHandler(handler)
        await store.aclose()


def revocation_main(config: dict[str, Any], conn: Any) -> None:
    """Process entry point: hold the shared pair, then go on after the parent revoked it.

    Sends ``("holding", None)`` once it has obtained and used the pair, waits for
    ``"revoked"``, then sends ``("done", stats)`` once it has seen the revocation through the
    store and made ``calls_after`` API calls; ``("crash", traceback)`` on any failure.
    """
    try:
        asyncio.run(_revocation_steps(config, conn))
    except BaseException:
        conn.send(("crash", traceback.format_exc()[-4000:]))
        raise
    finally:
        conn.close()
