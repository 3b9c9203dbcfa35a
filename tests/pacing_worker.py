"""One process of a paced fleet: a Client behind a RedisRateLimiter, sending as fast as it can.

Run by tests/test_fleet_pacing.py (``multiprocessing`` spawn). The result (counts, errors, the
limiter's counters and the cool-down it set, if any) is written as JSON to ``result_path``.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from typing import Any

from apimw_async import Client, Credentials, RateLimitError
from apimw_async.stores.redis import RedisRateLimiter

__all__ = ["worker_main"]


async def _run(config: dict[str, Any], stop: Any, result: dict[str, Any]) -> None:
    if config.get("cluster"):
        from redis.asyncio.cluster import RedisCluster

        # Generous timeouts: a loaded test machine must not look like a Redis outage.
        redis_client: Any = RedisCluster.from_url(config["redis_url"], socket_timeout=10)
        limiter = RedisRateLimiter(
            client=redis_client, limits=config["limits"], prefix=config["prefix"]
        )
    else:
        redis_client = None
        limiter = RedisRateLimiter.from_url(
            config["redis_url"], limits=config["limits"], prefix=config["prefix"], socket_timeout=10
        )
    errors: list[str] = []
    counts = {"sent": 0, "rate_limited": 0}

    async with (
        limiter,
        Client(
            Credentials(config["api_key"], config["api_secret"]),
            base_url=config["base_url"],
            rate_limiter=limiter,
        ) as client,
    ):

        async def task(index: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    await client.whatsapp.send_text("+15550001111", f"{index}-{n}")
                    counts["sent"] += 1
                except RateLimitError:
                    counts["rate_limited"] += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(task(i) for i in range(config.get("tasks", 4))))
    if redis_client is not None:
        await redis_client.aclose()
    stats = limiter.stats
    result.update(
        errors=errors[:20],
        error_count=len(errors),
        pauses=stats.pauses,
        outages=stats.outages,
        last_pause=stats.last_pause,
        **counts,
    )


def worker_main(config: dict[str, Any], result_path: str, barrier: Any, stop: Any) -> None:
    """Entry point of a spawned worker: wait for the others, send until ``stop`` is set."""
    result: dict[str, Any] = {"ok": False}
    try:
        barrier.wait(60)
        asyncio.run(_run(config, stop, result))
        result["ok"] = True
    except BaseException:
        result["crash"] = traceback.format_exc()
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump(result, file)
