"""A FastAPI service that sends WhatsApp messages on request and receives APIMW webhooks.

Self-contained demo: starts a fake APIMW server and this app under uvicorn, registers the
app's webhook, sends a message through the app, shows the delivery events it received, exits::

    python examples/fastapi_app.py

As a real service (``pip install "apimw-async[fastapi]" uvicorn``)::

    export APIMW_API_KEY=ak_live_… APIMW_API_SECRET=sk_live_… APIMW_WEBHOOK_SECRET=whsec_…
    uvicorn examples.fastapi_app:app --host 0.0.0.0 --port 8000
    # once: tell APIMW where the app is (an HTTPS URL reaching this app)
    python examples/fastapi_app.py register https://your.host/webhooks

Endpoints: ``POST /messages`` ``{"to": "+1234567890", "text": "Hi"}`` sends a text,
``GET /messages/{id}`` asks APIMW for its status, ``GET /events`` lists the webhook events
received, ``POST /webhooks`` is where APIMW delivers them.

What :mod:`apimw_async.fastapi` does here: ``apimw_lifespan`` makes one client at startup
(wrong credentials stop the startup), every request gets it through ``ClientDep`` (one token
for all of them), and ``webhook_router`` verifies each delivery's signature over the raw body,
answers APIMW's verification challenge, acknowledges at once while ``EventLog.record`` runs in
the background, ignores redeliveries, and lets running handlers finish at shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import Request

from apimw_async import (
    APIMWError,
    Client,
    ConfigurationError,
    InvalidPhoneNumberError,
    NotFoundError,
    RateLimitError,
    ValidationError,
)
from apimw_async.fastapi import ClientDep, apimw_lifespan, get_app_client, webhook_router
from apimw_async.webhooks import MessageEvent, WebhookEvent, WebhookReceiver

log = logging.getLogger("fastapi_app")

ENV_WEBHOOK_SECRET = "APIMW_WEBHOOK_SECRET"
EVENTS = ["message.sent", "message.delivered", "message.read", "message.failed"]


class OutgoingText(BaseModel):
    to: str
    text: str


class EventLog:
    """The webhook handler: keeps the latest events (a real app would update its database)."""

    def __init__(self, size: int = 100) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self._changed = asyncio.Condition()

    async def record(self, event: WebhookEvent) -> None:
        if not isinstance(event, MessageEvent):
            log.info("ignoring %s event", event.type)
            return
        entry = {
            "type": event.type,
            "message_id": event.message_id,
            "status": event.status,
            "at": event.timestamp.isoformat() if event.timestamp else None,
        }
        async with self._changed:
            self.events.append(entry)
            self._changed.notify_all()
        log.info("%s %s", event.type, event.message_id)

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(list(self.events)))


def create_app(webhook_secret: str | None = None) -> FastAPI:
    """The app; credentials come from the environment when it starts (``Client.from_env``)."""
    secret = webhook_secret or os.environ.get(ENV_WEBHOOK_SECRET)
    events = EventLog()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Runs inside apimw_lifespan: the client is ready (and its first token fetched) here.
        if not secret:
            raise ConfigurationError(f"set {ENV_WEBHOOK_SECRET} (the secret of your webhook)")
        log.info("sending through %s", get_app_client(app).base_url)
        yield

    app = FastAPI(title="APIMW example", lifespan=apimw_lifespan(lifespan))
    app.state.events = events
    # Without a secret the startup fails above; the random one only keeps the receiver closed.
    receiver = WebhookReceiver(secret or secrets.token_hex(32), events.record)
    app.include_router(webhook_router(receiver, "/webhooks"))

    @app.post("/messages")
    async def send_message(body: OutgoingText, client: ClientDep) -> dict[str, str]:
        sent = await client.whatsapp.send_text(body.to, body.text)
        return {"message_id": sent.message_id, "status": sent.raw_status}

    @app.get("/messages/{message_id}")
    async def message_status(message_id: str, client: ClientDep) -> dict[str, Any]:
        info = await client.whatsapp.get_status(message_id)
        return {"message_id": info.message_id, "status": info.raw_status}

    @app.get("/events")
    async def received_events() -> list[dict[str, Any]]:
        return list(events.events)

    # SDK errors as HTTP answers of this app (the most specific handler wins).
    @app.exception_handler(ValidationError)
    @app.exception_handler(InvalidPhoneNumberError)
    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RateLimitError)
    async def slow_down(_: Request, exc: Exception) -> JSONResponse:
        wait = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(max(1, round(wait)))} if wait else None
        return JSONResponse({"detail": "APIMW rate limit reached"}, 429, headers=headers)

    @app.exception_handler(APIMWError)
    async def upstream(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"APIMW: {exc}"}, status_code=502)

    return app


#: For ``uvicorn examples.fastapi_app:app`` (configured by the environment at startup).
app = create_app()


# --- one-time webhook registration -------------------------------------------------------------


async def register(url: str) -> str:
    """Register ``url`` for the delivery events, signed with ``$APIMW_WEBHOOK_SECRET``."""
    secret = os.environ.get(ENV_WEBHOOK_SECRET)
    if not secret:
        raise ConfigurationError(f"set {ENV_WEBHOOK_SECRET} first")
    async with Client.from_env() as client:
        hook = await client.webhooks.register(url, EVENTS, secret=secret)
    return hook.id


# --- the self-contained demo -------------------------------------------------------------------


async def demo() -> int:
    import aiohttp
    import uvicorn

    from apimw_async.testing import FakeAPIMW

    class Server(uvicorn.Server):
        """uvicorn's server with an event for "listening" (it only has a ``started`` flag)."""

        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            self.listening = asyncio.Event()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            self.listening.set()

    async with FakeAPIMW(delivery_delay=0.2, read_delay=0.4) as fake:
        # The same configuration a deployment gets from its environment.
        os.environ.update(
            {
                "APIMW_BASE_URL": fake.base_url,
                "APIMW_API_KEY": fake.credentials.api_key,
                "APIMW_API_SECRET": fake.credentials.api_secret,
                ENV_WEBHOOK_SECRET: "whsec_" + secrets.token_hex(16),
            }
        )
        demo_app = create_app()
        with socket.socket() as sock:  # a free port, bound before the server starts
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            server = Server(uvicorn.Config(demo_app, lifespan="on", log_level="warning"))
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            listening = asyncio.create_task(server.listening.wait())
            await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
            if not server.started:
                listening.cancel()
                await serving
                return 1
            base = f"http://127.0.0.1:{port}"
            print(f"fake APIMW at {fake.base_url}; app at {base}")
            try:
                # 1. Tell APIMW where to deliver; it checks with a challenge first.
                client = get_app_client(demo_app)
                secret = os.environ[ENV_WEBHOOK_SECRET]
                hook = await client.webhooks.register(f"{base}/webhooks", EVENTS, secret=secret)
                await fake.wait_until(lambda s: s.verifications + s.verification_failures > 0)
                verified = fake.webhooks[hook.id].verified
                print(f"registered webhook {hook.id}: challenge answered = {verified}")

                # 2. Send a message through the app.
                async with aiohttp.ClientSession() as http:
                    body = {"to": "+15550001234", "text": "Your order has shipped!"}
                    async with http.post(f"{base}/messages", json=body) as response:
                        sent = await response.json()
                    print(f"POST /messages -> {response.status} {sent}")
                    message_id = sent["message_id"]

                    # 3. The webhook events arrive: sent, delivered, read.
                    events: EventLog = demo_app.state.events
                    await asyncio.wait_for(
                        events.wait_for(
                            lambda seen: any(
                                e["type"] == "message.read" and e["message_id"] == message_id
                                for e in seen
                            )
                        ),
                        timeout=30,
                    )
                    async with http.get(f"{base}/events") as response:
                        received = await response.json()
                print("delivery events received by the app:")
                for event in received:
                    print(f"  {event['type']:<18} {event['message_id'][:20]}...  {event['at']}")
                print(
                    f"token requests: {fake.stats.token_calls}; "
                    f"deliveries acknowledged: {fake.stats.deliveries}"
                )
            finally:
                server.should_exit = True
                await serving
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    reg = commands.add_parser("register", help="register this app's public webhook URL once")
    reg.add_argument("url", help="e.g. https://your.host/webhooks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "register":
        print("registered webhook", asyncio.run(register(args.url)))
        return 0
    return asyncio.run(demo())


if __name__ == "__main__":
    sys.exit(main())
