"""``apimw_async.fastapi``: real FastAPI apps under a real uvicorn server on loopback, against
the bundled fake APIMW server (which also delivers the signed webhooks)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytest.importorskip("fastapi", minversion="0.112.2")
pytest.importorskip("uvicorn")

import aiohttp
import uvicorn
from fastapi import FastAPI, Request

from apimw_async import (
    Client,
    ConfigurationError,
    Credentials,
    InvalidCredentialsError,
    Webhook,
)
from apimw_async.fastapi import (
    STATE_KEY,
    ClientDep,
    apimw_lifespan,
    get_app_client,
    webhook_endpoint,
    webhook_router,
)
from apimw_async.testing import FakeAPIMW
from apimw_async.webhooks import (
    SIGNATURE_HEADER,
    MessageEvent,
    WebhookEvent,
    WebhookReceiver,
    sign,
)

SECRET = "whsec_fastapi_test_secret"
PHONE = "+15550001234"
#: Only a guard against a hung test; every wait below ends on an event or a counter.
WAIT = 30.0


# --- a real ASGI server in the test's event loop -----------------------------------------------


class StartupFailed(Exception):
    """uvicorn refused to start (it raises SystemExit, which must not escape a task)."""


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.startup_done.set()


async def _run(server: _Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        raise StartupFailed(f"uvicorn exited with {exc.code}") from None


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL.

    ``log_config=None`` keeps uvicorn from reconfiguring logging (its records reach caplog).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        log_config=None,
        access_log=False,
    )
    server = _Server(config)
    task = asyncio.create_task(_run(server))
    ready = asyncio.create_task(server.startup_done.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if not server.started:
        await task  # raises StartupFailed
        raise StartupFailed("uvicorn stopped before it started")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# --- helpers -----------------------------------------------------------------------------------


def factory_for(
    fake: FakeAPIMW, made: list[Client] | None = None, credentials: Credentials | None = None
) -> Callable[[], Client]:
    """A client factory pointed at ``fake`` that remembers the clients it made."""

    def make() -> Client:
        client = Client(credentials or fake.credentials, base_url=fake.base_url)
        if made is not None:
            made.append(client)
        return client

    return make


class Recorder:
    """A webhook handler that records events; ``gate`` holds it until the test opens it."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []
        self.finished: list[WebhookEvent] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._changed = asyncio.Condition()
        self.after_gate: Callable[[], Any] | None = None

    async def __call__(self, event: WebhookEvent) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        await self.gate.wait()
        if self.after_gate is not None:
            await self.after_gate()
        self.finished.append(event)

    async def wait_for(self, predicate: Callable[[Sequence[WebhookEvent]], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.events)), WAIT)


def make_app(
    fake: FakeAPIMW,
    receiver: WebhookReceiver | None = None,
    *,
    fetch_token: bool = True,
    made: list[Client] | None = None,
    **router_options: Any,
) -> FastAPI:
    app = FastAPI(
        lifespan=apimw_lifespan(client_factory=factory_for(fake, made), fetch_token=fetch_token)
    )

    @app.get("/me")
    async def me(client: ClientDep) -> dict[str, Any]:
        current = await client.auth.me()
        return {"tenant": current.tenant.id, "client": id(client)}

    @app.post("/send")
    async def send(to: str, text: str, client: ClientDep) -> dict[str, str]:
        sent = await client.whatsapp.send_text(to, text)
        return {"message_id": sent.message_id}

    if receiver is not None:
        app.include_router(webhook_router(receiver, **router_options))
    return app


async def register(app: FastAPI, base: str, events: list[str], fake: FakeAPIMW) -> Webhook:
    """Register the app's webhook URL with the fake and wait for the handshake to pass."""
    client = get_app_client(app)
    hook = await client.webhooks.register(f"{base}/webhooks", events, secret=SECRET)
    await fake.wait_until(lambda s: s.verifications + s.verification_failures >= 1, WAIT)
    assert fake.webhooks[hook.id].verified
    return hook


# --- the client: lifespan and dependency -------------------------------------------------------


async def test_concurrent_requests_share_one_token(fake: FakeAPIMW) -> None:
    made: list[Client] = []
    # No token at startup: the 200 requests race for the first one.
    app = make_app(fake, fetch_token=False, made=made)
    async with serve(app) as base:
        assert fake.stats.token_calls == 0
        async with aiohttp.ClientSession() as http:

            async def call() -> dict[str, Any]:
                async with http.get(f"{base}/me") as response:
                    assert response.status == 200, await response.text()
                    result: dict[str, Any] = await response.json()
                    return result

            results = await asyncio.gather(*(call() for _ in range(200)))
    assert fake.stats.token_calls == 1
    assert fake.stats.me_calls == 200
    assert fake.stats.unauthorized == 0
    assert len({r["client"] for r in results}) == 1
    assert len(made) == 1
    assert made[0].closed  # closed at shutdown
    assert not hasattr(app.state, STATE_KEY)


async def test_first_token_is_fetched_at_startup(fake: FakeAPIMW) -> None:
    app = make_app(fake)
    async with serve(app) as base:
        assert fake.stats.token_calls == 1  # before any request
        async with aiohttp.ClientSession() as http, http.get(f"{base}/me") as response:
            assert response.status == 200
    assert fake.stats.token_calls == 1


async def test_bad_credentials_fail_the_startup(
    fake: FakeAPIMW, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[Client] = []
    wrong = Credentials(fake.credentials.api_key, "sk_test_wrong_secret_000000")
    app = FastAPI(
        lifespan=apimw_lifespan(client_factory=factory_for(fake, made, credentials=wrong))
    )

    # The typed error, straight from the lifespan ...
    with pytest.raises(InvalidCredentialsError):
        async with app.router.lifespan_context(app):
            pass
    # ... and a real server refuses to start (uvicorn logs the traceback and exits).
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"), pytest.raises(StartupFailed):
        async with serve(app):
            pass
    assert "InvalidCredentialsError" in caplog.text
    assert len(made) == 2
    assert all(client.closed for client in made)
    assert not hasattr(app.state, STATE_KEY)


async def test_bad_credentials_without_fail_fast_start_anyway(fake: FakeAPIMW) -> None:
    wrong = Credentials(fake.credentials.api_key, "sk_test_wrong_secret_000000")
    app = FastAPI(
        lifespan=apimw_lifespan(
            client_factory=factory_for(fake, credentials=wrong), fetch_token=False
        )
    )
    async with app.router.lifespan_context(app):
        client = get_app_client(app)
        assert fake.stats.token_calls == 0
        with pytest.raises(InvalidCredentialsError):
            await client.auth.me()


@asynccontextmanager
async def cm_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    client = get_app_client(app)  # the client exists for all of the user's lifespan
    app.state.log.append(("enter", client.closed))
    yield {"greeting": "hello"}
    app.state.log.append(("exit", client.closed))


async def gen_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    client = get_app_client(app)
    app.state.log.append(("enter", client.closed))
    yield {"greeting": "hello"}
    app.state.log.append(("exit", client.closed))


@pytest.mark.parametrize("user_lifespan", [cm_lifespan, gen_lifespan], ids=["cm", "asyncgen"])
async def test_wraps_the_users_lifespan(fake: FakeAPIMW, user_lifespan: Any) -> None:
    made: list[Client] = []
    app = FastAPI(lifespan=apimw_lifespan(user_lifespan, client_factory=factory_for(fake, made)))
    app.state.log = []

    @app.get("/greet")
    async def greet(request: Request, client: ClientDep) -> dict[str, Any]:
        me = await client.auth.me()
        return {"greeting": request.state.greeting, "user": me.user.id}

    async with (
        serve(app) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/greet") as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["greeting"] == "hello"
    assert body["user"].startswith("usr_")
    # The user's lifespan ran inside: the client was open on entry and on exit.
    assert app.state.log == [("enter", False), ("exit", False)]
    assert made[0].closed


async def test_nested_in_the_users_lifespan(fake: FakeAPIMW) -> None:
    seen: list[Client] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with apimw_lifespan(client_factory=factory_for(fake))(app):
            seen.append(get_app_client(app))
            yield

    app = FastAPI(lifespan=lifespan)
    async with app.router.lifespan_context(app):
        assert get_app_client(app) is seen[0]
    assert seen[0].closed
    with pytest.raises(ConfigurationError):
        get_app_client(app)


async def test_applying_it_twice_is_refused(fake: FakeAPIMW) -> None:
    app = FastAPI()
    outer = apimw_lifespan(client_factory=factory_for(fake), fetch_token=False)
    inner = apimw_lifespan(client_factory=factory_for(fake), fetch_token=False)
    async with outer(app):
        with pytest.raises(ConfigurationError, match="twice"):
            async with inner(app):
                pass
        assert not get_app_client(app).closed


async def test_an_app_can_start_again(fake: FakeAPIMW) -> None:
    made: list[Client] = []
    app = FastAPI(lifespan=apimw_lifespan(client_factory=factory_for(fake, made)))
    for _ in range(2):
        async with app.router.lifespan_context(app):
            assert get_app_client(app) is made[-1]
    assert len(made) == 2
    assert all(client.closed for client in made)
    assert fake.stats.token_calls == 2


async def test_dependency_without_the_lifespan_is_a_clear_error() -> None:
    app = FastAPI()
    with pytest.raises(ConfigurationError, match="apimw_lifespan"):
        get_app_client(app)

    @app.get("/me")
    async def me(client: ClientDep) -> dict[str, str]:
        raise AssertionError("not reached")

    async with (
        serve(app) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/me") as response,
    ):
        assert response.status == 500


async def test_factory_must_return_a_client() -> None:
    app = FastAPI(lifespan=apimw_lifespan(client_factory=lambda: "nope"))  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="client_factory"):
        async with app.router.lifespan_context(app):
            pass


# --- webhooks ----------------------------------------------------------------------------------


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def receiver(recorder: Recorder) -> WebhookReceiver:
    return WebhookReceiver(SECRET, recorder)


@pytest.mark.apimw_fake(delivery_delay=None)
async def test_signed_delivery_from_apimw_reaches_the_handler(
    fake: FakeAPIMW, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    app = make_app(fake, receiver)
    async with serve(app) as base:
        hook = await register(app, base, ["message.sent"], fake)  # the challenge was answered
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/send", params={"to": PHONE, "text": "hi"}) as response,
        ):
            assert response.status == 200
            message_id = (await response.json())["message_id"]
        await recorder.wait_for(lambda events: any(e.type == "message.sent" for e in events))
        await fake.wait_for_deliveries(WAIT)
    [event] = recorder.events
    assert isinstance(event, MessageEvent)
    assert (event.type, event.message_id, event.to) == ("message.sent", message_id, PHONE)
    assert fake.webhooks[hook.id].deliveries == 1
    assert fake.stats.delivery_failures == 0
    assert receiver.stats.challenges == 1
    assert receiver.closed  # closed by the router's lifespan at shutdown


@pytest.mark.apimw_fake(delivery_delay=None)
async def test_forged_deliveries_get_401(
    fake: FakeAPIMW, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    app = make_app(fake, receiver)
    payload = {"id": "evt_1", "type": "message.read", "data": {"message_id": "wamid.X"}}
    async with serve(app) as base:
        hook = await register(app, base, ["message.read"], fake)
        for forgery in ("forged", "malformed", "missing"):
            status = await fake.inject_delivery(hook.id, payload, signature=forgery)
            assert status == 401, forgery
        # A signature made with another secret, posted by hand.
        body = json.dumps(payload).encode()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/webhooks",
                data=body,
                headers={SIGNATURE_HEADER: sign("whsec_attacker", body)},
            ) as response,
        ):
            assert response.status == 401
        assert await fake.inject_delivery(hook.id, payload) == 200
        await receiver.drain()
    assert [e.id for e in recorder.events] == ["evt_1"]
    assert receiver.stats.rejected == 4


async def test_challenge_is_answered(fake: FakeAPIMW, receiver: WebhookReceiver) -> None:
    app = make_app(fake, receiver)
    async with serve(app) as base:
        hook = await register(app, base, ["message.delivered"], fake)
        assert await fake.verify_webhook(hook.id)  # the handshake, once more
        body = b'{"type": "webhook.verification", "challenge": "ch_\xc3\xa9t\xc3\xa9"}'
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/webhooks", data=body, headers={SIGNATURE_HEADER: sign(SECRET, body)}
            ) as response,
        ):
            assert response.status == 200
            assert await response.text() == "ch_été"
    assert fake.stats.verifications == 2
    assert receiver.stats.challenges == 3


@pytest.mark.apimw_fake(delivery_delay=None)
async def test_acknowledged_while_the_handler_still_runs(
    fake: FakeAPIMW, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    recorder.gate.clear()
    app = make_app(fake, receiver)
    async with serve(app) as base:
        hook = await register(app, base, ["message.sent"], fake)
        await get_app_client(app).whatsapp.send_text(PHONE, "hello")
        await fake.wait_until(lambda s: s.deliveries >= 1, WAIT)
        # APIMW has its 200 although the handler has not finished.
        assert fake.webhooks[hook.id].deliveries == 1
        assert receiver.pending == 1
        assert recorder.finished == []
        recorder.gate.set()
        await receiver.drain()
        assert len(recorder.finished) == 1


@pytest.mark.apimw_fake(delivery_delay=None, duplicate_deliveries=1.0, seed=7)
async def test_redeliveries_are_suppressed(
    fake: FakeAPIMW, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    app = make_app(fake, receiver)
    async with serve(app) as base:
        await register(app, base, ["message.sent"], fake)
        await get_app_client(app).whatsapp.send_text(PHONE, "once")
        await fake.wait_until(lambda s: s.deliveries >= 2, WAIT)  # the event and its copy
        await receiver.drain()
    assert fake.stats.duplicate_deliveries == 1
    assert len(recorder.events) == 1
    assert receiver.stats.duplicates == 1


async def test_raw_body_method_and_size(receiver: WebhookReceiver, recorder: Recorder) -> None:
    # A webhook-only app: no client needed.
    app = FastAPI()
    app.include_router(webhook_router(receiver, "/hooks/apimw", max_body_size=256))
    url = None
    async with serve(app) as base, aiohttp.ClientSession() as http:
        url = f"{base}/hooks/apimw"
        # Odd spacing and key order: re-serialised JSON would not match the signature.
        body = b'{ "type" :"message.read",\n  "id": "evt_9", "data": {"message_id":"wamid.R"} }'
        async with http.post(url, data=body, headers={SIGNATURE_HEADER: sign(SECRET, body)}) as r:
            assert r.status == 200
        async with http.get(url) as r:
            assert r.status == 405
        big = b'{"type": "message.read", "pad": "' + b"x" * 300 + b'"}'
        async with http.post(url, data=big, headers={SIGNATURE_HEADER: sign(SECRET, big)}) as r:
            assert r.status == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(10):
                yield b"x" * 64

        async with http.post(url, data=chunks()) as r:
            assert r.status == 413
        await receiver.drain()
    event = recorder.events[0]
    assert isinstance(event, MessageEvent)
    assert (event.id, event.status, event.message_id) == ("evt_9", "read", "wamid.R")
    assert len(recorder.events) == 1


class ClosingReceiver(WebhookReceiver):
    """Tells the test when the app's shutdown reaches the receiver."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closing = asyncio.Event()

    async def aclose(self, timeout: float | None = 10.0) -> None:
        self.closing.set()
        await super().aclose(timeout)


@pytest.mark.apimw_fake(delivery_delay=None)
async def test_shutdown_drains_handlers_before_closing_the_client(
    fake: FakeAPIMW, recorder: Recorder
) -> None:
    receiver = ClosingReceiver(SECRET, recorder)
    made: list[Client] = []
    app = make_app(fake, receiver, made=made, close_timeout=None)
    seen: list[str] = []

    async def use_client() -> None:  # a handler still needs the client during shutdown
        seen.append((await made[0].auth.me()).user.id)

    recorder.gate.clear()
    recorder.after_gate = use_client

    async def open_gate_at_shutdown() -> None:
        await receiver.closing.wait()
        recorder.gate.set()

    opener = asyncio.create_task(open_gate_at_shutdown())
    async with serve(app) as base:
        await register(app, base, ["message.sent"], fake)
        await made[0].whatsapp.send_text(PHONE, "hello")
        await recorder.wait_for(lambda events: len(events) == 1)
        assert receiver.pending == 1
    await opener
    assert receiver.closed
    assert receiver.pending == 0
    assert receiver.stats.handlers_cancelled == 0
    assert len(recorder.finished) == 1
    assert seen[0].startswith("usr_")
    assert made[0].closed


@pytest.mark.apimw_fake(delivery_delay=None)
async def test_shutdown_cancels_handlers_after_close_timeout(
    fake: FakeAPIMW, receiver: WebhookReceiver, recorder: Recorder
) -> None:
    recorder.gate.clear()  # never opened
    app = make_app(fake, receiver, close_timeout=0)
    async with serve(app) as base:
        await register(app, base, ["message.sent"], fake)
        await get_app_client(app).whatsapp.send_text(PHONE, "hello")
        await recorder.wait_for(lambda events: len(events) == 1)
    assert receiver.stats.handlers_cancelled == 1
    assert recorder.finished == []


async def test_endpoint_on_its_own(receiver: WebhookReceiver, recorder: Recorder) -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await receiver.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_api_route("/in", webhook_endpoint(receiver, max_body_size=None), methods=["POST"])
    body = b'{"type": "message.delivered", "id": "evt_2"}'
    async with serve(app) as base, aiohttp.ClientSession() as http:
        headers = {SIGNATURE_HEADER: sign(SECRET, body)}
        async with http.post(f"{base}/in", data=body, headers=headers) as response:
            assert response.status == 200
    assert receiver.closed
    assert [e.id for e in recorder.events] == ["evt_2"]


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_bad_max_body_size(receiver: WebhookReceiver, size: Any) -> None:
    with pytest.raises(ConfigurationError):
        webhook_endpoint(receiver, max_body_size=size)
