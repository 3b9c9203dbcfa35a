"""The token lifecycle under load, against the bundled fake server.

Many concurrent workers call ``GET /v1/auth/me`` through one :class:`Client` while short-lived
tokens expire again and again (and, if asked, the token endpoint fails now and then). The
result says how many requests were made, how many token calls that took, and whether the
application ever saw an error or a 401.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from typing import Any, TextIO

import attrs

from ._client import Client
from ._errors import AccessTokenError, APIMWError
from .testing import FakeAPIMW

__all__ = ["DemoConfig", "DemoResult", "format_table", "run_demo"]


@attrs.frozen
class DemoConfig:
    """Options of ``apimw-async demo``."""

    workers: int = 200
    duration: float = 10.0
    token_lifetime: float = 3.0
    token_latency: float = 0.05
    fail_500: float = 0.0
    fail_429: float = 0.0
    drop: float = 0.0
    reuse_detection: bool = True
    seed: int | None = None


@attrs.frozen
class DemoResult:
    """What one demo run measured."""

    config: DemoConfig
    elapsed: float
    requests: int
    errors: int
    error_kinds: dict[str, int]
    app_401s: int
    server_401s: int
    token_calls: int
    refresh_calls: int
    reauthentications: int
    refresh_reuse: int
    waits: int
    #: Waits with no valid token held: the cold start (expected).
    waits_without_valid_token: int
    #: Waits although a valid token was held (a refresh that came too late): should be 0.
    waits_with_valid_token: int
    token_lifetimes: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["requests_per_second"] = round(self.requests_per_second, 1)
        return data


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def run_demo(config: DemoConfig, *, progress: TextIO | None = None) -> DemoResult:
    """Run the demo and return its measurements (progress lines go to ``progress``)."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    app_401s = 0
    async with FakeAPIMW(
        token_lifetime=config.token_lifetime,
        token_latency=config.token_latency,
        reuse_detection=config.reuse_detection,
        seed=config.seed,
    ) as fake:
        for endpoint in ("token", "refresh"):
            fake.faults.set_rate(
                endpoint, error_500=config.fail_500, error_429=config.fail_429, drop=config.drop
            )
        async with Client(
            fake.credentials, base_url=fake.base_url, connector_limit=config.workers
        ) as client:
            start = time.perf_counter()
            stop_at = start + config.duration

            async def worker() -> None:
                nonlocal app_401s
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        await client.auth.me()
                    except AccessTokenError:
                        app_401s += 1
                        errors["AccessTokenError"] += 1
                    except APIMWError as exc:
                        errors[type(exc).__name__] += 1
                    latencies.append(time.perf_counter() - t0)

            async def report() -> None:
                assert progress is not None
                while True:
                    await asyncio.sleep(0.5)
                    elapsed = time.perf_counter() - start
                    progress.write(
                        f"\r{elapsed:5.1f}s  requests {len(latencies):>8}  errors "
                        f"{sum(errors.values()):>4}  token calls {client.tokens.stats.token_calls}"
                        f"  refreshes {client.tokens.stats.refresh_calls}   "
                    )
                    progress.flush()

            reporter = asyncio.create_task(report()) if progress is not None else None
            try:
                await asyncio.gather(*(worker() for _ in range(config.workers)))
            finally:
                if reporter is not None:
                    reporter.cancel()
                    await asyncio.gather(reporter, return_exceptions=True)
                    progress.write("\n") if progress is not None else None
            elapsed = time.perf_counter() - start
            stats = client.tokens.stats
        ordered = sorted(latencies)
        return DemoResult(
            config=config,
            elapsed=round(elapsed, 3),
            requests=len(latencies),
            errors=sum(errors.values()),
            error_kinds=dict(errors),
            app_401s=app_401s,
            server_401s=fake.stats.unauthorized,
            token_calls=stats.token_calls,
            refresh_calls=stats.refresh_calls,
            reauthentications=stats.fallbacks,
            refresh_reuse=fake.stats.refresh_reuse,
            waits=stats.waits,
            waits_without_valid_token=stats.waits_without_valid_token,
            waits_with_valid_token=stats.waits_with_valid_token,
            token_lifetimes=round(elapsed / config.token_lifetime, 2),
            p50_ms=round(_percentile(ordered, 0.50) * 1000, 2),
            p99_ms=round(_percentile(ordered, 0.99) * 1000, 2),
            max_ms=round((ordered[-1] if ordered else 0.0) * 1000, 2),
        )


def format_table(result: DemoResult) -> str:
    """The result as an aligned two-column table."""
    c = result.config
    rows = [
        ("workers / duration", f"{c.workers} / {result.elapsed:.1f} s"),
        ("token lifetime", f"{c.token_lifetime:g} s ({result.token_lifetimes:g} lifetimes)"),
        ("requests done", f"{result.requests} ({result.requests_per_second:.0f}/s)"),
        ("errors seen by the app", str(result.errors)),
        ("401s seen by the app", str(result.app_401s)),
        ("401s answered by the server", str(result.server_401s)),
        ("token calls (credentials)", str(result.token_calls)),
        ("refresh calls", str(result.refresh_calls)),
        ("re-authentications", str(result.reauthentications)),
        ("refresh-token reuse", str(result.refresh_reuse)),
        ("waits for a first token (none valid)", str(result.waits_without_valid_token)),
        ("waits while a valid token was held", str(result.waits_with_valid_token)),
        ("latency p50 / p99 / max", f"{result.p50_ms} / {result.p99_ms} / {result.max_ms} ms"),
    ]
    if result.error_kinds:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(result.error_kinds.items()))
        rows.insert(4, ("error kinds", kinds))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def progress_stream() -> TextIO | None:
    """Live progress goes to a terminal only."""
    return sys.stderr if sys.stderr.isatty() else None
