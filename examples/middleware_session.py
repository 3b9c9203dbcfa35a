"""Your own ``aiohttp.ClientSession``, authenticated by ``apimw_async.BearerAuthMiddleware``.

    python examples/middleware_session.py

For code that already owns an aiohttp session (its own timeouts, connection pool, tracing...)
and calls APIMW endpoints directly, including ones this SDK does not wrap. The middleware takes
the bearer token from a :class:`apimw_async.TokenManager` (fetched once, refreshed before it
expires, shared by every concurrent request) and puts it only on requests under the API base
URL, so the same session can call other services without leaking the token. When APIMW
refuses a token (401 ``EXPIRED_TOKEN``, ``INVALID_TOKEN``, ``REVOKED_TOKEN``), the middleware
drops it, gets a fresh one and replays the request once.

Without ``APIMW_API_KEY``/``APIMW_API_SECRET`` in the environment it starts a fake APIMW server
here, sends a message, and expires every token on the server to show the replay. With them set
it only reads ``GET /auth/me`` (add ``--to +E164NUMBER`` to send a test message too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from apimw_async import BearerAuthMiddleware, Credentials, TokenManager
from apimw_async.testing import FakeAPIMW


async def api(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    """One plain aiohttp call; the envelope's ``data``, or an exception with the error."""
    async with session.request(method, url, **kwargs) as response:
        payload = await response.json(content_type=None)
        if response.status >= 400 or not payload.get("success"):
            raise RuntimeError(f"{method} {url}: {response.status} {payload.get('error')}")
        return payload["data"]


async def demo(
    credentials: Credentials, base_url: str, fake: FakeAPIMW | None, to: str | None
) -> None:
    tokens = TokenManager(credentials, base_url=base_url)
    middleware = BearerAuthMiddleware(tokens)  # scope: only URLs under base_url
    async with (
        tokens,
        aiohttp.ClientSession(
            middlewares=(middleware,), timeout=aiohttp.ClientTimeout(total=30)
        ) as session,
    ):
        me = await api(session, "GET", f"{base_url}/auth/me")
        print(
            f"GET /auth/me            -> user {me['user']['id']}, tenant {me['tenant']['id']} "
            f"({me['tenant']['plan']} plan)"
        )

        if to is not None:
            body = {"to": to, "message": "Hello from my own aiohttp session"}
            sent = await api(session, "POST", f"{base_url}/whatsapp/messages/send", json=body)
            message_id = sent["message_id"]
            print(f"POST /whatsapp/.../send -> {message_id[:24]}... ({sent['status']})")
            path = quote(message_id, safe="")  # an id is one path segment, whatever it holds
            info = await api(session, "GET", f"{base_url}/whatsapp/messages/{path}")
            print(f"GET /whatsapp/messages  -> status {info['status']}")

        if fake is not None:
            # Every token the server issued now answers 401 EXPIRED_TOKEN (as after a server-side
            # revocation, or a token that outlived its clock). The middleware replays once.
            fake.expire_access_tokens()
            refused_before = fake.stats.unauthorized
            me = await api(session, "GET", f"{base_url}/auth/me")
            refused = fake.stats.unauthorized - refused_before
            print(
                f"after expiring tokens   -> GET /auth/me still OK ({refused} refusal "
                "seen only by the middleware, which replayed with a new token)"
            )

        # Concurrent requests share the one token.
        await asyncio.gather(*(api(session, "GET", f"{base_url}/auth/me") for _ in range(20)))
        stats = tokens.stats
        print(
            f"20 concurrent requests  -> OK; token endpoint calls so far: {stats.token_calls} "
            f"token + {stats.refresh_calls} refresh; tokens dropped after a 401: "
            f"{stats.invalidations}"
        )


async def run(to: str | None) -> int:
    if os.environ.get("APIMW_API_KEY") and os.environ.get("APIMW_API_SECRET"):
        credentials = Credentials.from_env()
        base_url = os.environ.get("APIMW_BASE_URL", "https://api.apimw.com/v1")
        await demo(credentials, base_url, None, to)
        return 0
    async with FakeAPIMW() as fake:
        print(f"fake APIMW server at {fake.base_url}")
        await demo(fake.credentials, fake.base_url, fake, to or "+15550001234")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", metavar="E164", help="also send a text message to this number")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.to))


if __name__ == "__main__":
    sys.exit(main())
