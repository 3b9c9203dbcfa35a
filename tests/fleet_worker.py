"""One process of a test fleet: a Client sharing its token through Redis, many tasks using it.

Run by tests/test_fleet.py (``multiprocessing`` spawn or fork) and examples/fleet_workers.py.
The result (counters, errors, the access tokens seen) is written as JSON to ``result_path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import traceback
from typing import Any

from apimw_async import Client, Credentials, TokenManager
from apimw_async.stores.redis import RedisTokenStore

__all__ = ["fork_main", "run_worker", "use_client", "worker_main"]


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
