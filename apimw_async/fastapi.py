"""FastAPI integration: one shared :class:`~apimw_async.Client` per app, and a webhook router.

Install with ``pip install "apimw-async[fastapi]"``. ::

    import os

    from fastapi import FastAPI

    from apimw_async.fastapi import ClientDep, apimw_lifespan, webhook_router
    from apimw_async.webhooks import MessageEvent, WebhookEvent, WebhookReceiver

    async def on_event(event: WebhookEvent) -> None:
        if isinstance(event, MessageEvent):
            print(event.type, event.message_id)

    receiver = WebhookReceiver(os.environ["APIMW_WEBHOOK_SECRET"], on_event)
    app = FastAPI(lifespan=apimw_lifespan())        # Client.from_env() at startup
    app.include_router(webhook_router(receiver))    # POST /webhooks

    @app.post("/notify/{phone}")
    async def notify(phone: str, client: ClientDep) -> dict[str, str]:
        sent = await client.whatsapp.send_text(phone, "Your order shipped!")
        return {"message_id": sent.message_id}

:func:`apimw_lifespan` creates the client when the app starts (fetching the first token, so
wrong credentials stop the startup), keeps it on ``app.state`` and closes it at shutdown; it
wraps your own lifespan if you pass one. :data:`ClientDep` (or ``Depends(get_client)``) hands
it to path operations; :func:`get_app_client` reaches it from anywhere holding the app.
:func:`webhook_router` serves a :class:`~apimw_async.webhooks.WebhookReceiver`, the same
framework-agnostic receiver the aiohttp adapter uses: it checks the signature over the raw
body, answers the verification challenge, acknowledges at once while your handler runs in the
background, suppresses redeliveries, and is closed (handlers drained) at shutdown.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Final, TypeVar, cast, overload

try:
    from fastapi import APIRouter, Depends, Request
    from fastapi import __version__ as _fastapi_version
    from fastapi.responses import Response
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, HTTPConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "apimw_async.fastapi needs FastAPI: pip install 'apimw-async[fastapi]'"
    ) from exc

from ._client import Client
from ._config import LOGGER_NAME
from ._errors import ConfigurationError
from .webhooks import DEFAULT_CLOSE_TIMEOUT, WebhookReceiver

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "STATE_KEY",
    "ClientDep",
    "apimw_lifespan",
    "get_app_client",
    "get_client",
    "webhook_endpoint",
    "webhook_router",
]

log = logging.getLogger(f"{LOGGER_NAME}.fastapi")

#: The ``app.state`` attribute :func:`apimw_lifespan` keeps the client under.
STATE_KEY: Final = "apimw_client"
#: Largest webhook body read (larger ones get 413), as aiohttp's default ``client_max_size``.
DEFAULT_MAX_BODY_SIZE: Final = 1024 * 1024

AppT = TypeVar("AppT", bound=Starlette)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits or 0))
    return tuple(parts)


#: FastAPI runs the lifespan of an included router from 0.112.2 on (fastapi PR #9630).
_ROUTER_LIFESPANS: Final = _version_tuple(_fastapi_version) >= (0, 112, 2)

#: A user lifespan: an async context manager factory, or an async generator function.
UserLifespan = (
    Callable[[AppT], AbstractAsyncContextManager[Any]] | Callable[[AppT], AsyncIterator[Any]]
)


@overload
def apimw_lifespan(
    lifespan: None = None,
    *,
    client_factory: Callable[[], Client] = ...,
    fetch_token: bool = ...,
) -> Callable[[Starlette], AbstractAsyncContextManager[Any]]: ...


@overload
def apimw_lifespan(
    lifespan: UserLifespan[AppT],
    *,
    client_factory: Callable[[], Client] = ...,
    fetch_token: bool = ...,
) -> Callable[[AppT], AbstractAsyncContextManager[Any]]: ...


def apimw_lifespan(
    lifespan: UserLifespan[Any] | None = None,
    *,
    client_factory: Callable[[], Client] = Client.from_env,
    fetch_token: bool = True,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A lifespan for ``FastAPI(lifespan=...)`` that owns one :class:`Client` for the app.

    At startup ``client_factory()`` makes the client (by default :meth:`Client.from_env`:
    ``APIMW_API_KEY``, ``APIMW_API_SECRET``, ``APIMW_BASE_URL``); with ``fetch_token`` (the
    default) the first access token is fetched right away, so wrong credentials fail the
    startup with :class:`~apimw_async.InvalidCredentialsError` (and an unreachable API with
    :class:`~apimw_async.TokenUnavailableError`) instead of failing the first request. Pass
    ``fetch_token=False`` to start regardless and get the token on first use.

    The client is stored as ``app.state.apimw_client`` (see :func:`get_client`,
    :func:`get_app_client`) and closed at shutdown. ``lifespan``, your own lifespan (an
    ``@asynccontextmanager`` function or an async generator function), runs inside: the client
    exists for all of it, and whatever state it yields is passed on to the server. To nest
    instead, enter this one from yours: ``async with apimw_lifespan()(app): yield``.

    Every request handled by the app shares this one client, hence one token manager: one token
    request however many requests arrive at once.
    """
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] | None
    if lifespan is not None and inspect.isasyncgenfunction(lifespan):
        inner = asynccontextmanager(cast("Callable[[Any], AsyncIterator[Any]]", lifespan))
    else:
        inner = cast("Callable[[Any], AbstractAsyncContextManager[Any]] | None", lifespan)

    @asynccontextmanager
    async def apimw_client_lifespan(app: Starlette) -> AsyncIterator[Any]:
        current = getattr(app.state, STATE_KEY, None)
        if isinstance(current, Client) and not current.closed:
            raise ConfigurationError(
                f"app.state.{STATE_KEY} already holds an open client: is apimw_lifespan "
                "applied twice?"
            )
        client = client_factory()
        if not isinstance(client, Client):
            raise ConfigurationError("client_factory must return an apimw_async.Client")
        try:
            if fetch_token:
                await client.tokens.get_token()
            setattr(app.state, STATE_KEY, client)
            log.info("APIMW client ready for %s", client.base_url)
            try:
                if inner is None:
                    yield None
                else:
                    async with inner(app) as state:
                        yield state
            finally:
                if getattr(app.state, STATE_KEY, None) is client:
                    delattr(app.state, STATE_KEY)
        finally:
            await client.aclose()

    return apimw_client_lifespan


def get_app_client(app: Starlette) -> Client:
    """The client :func:`apimw_lifespan` made for ``app`` (only while the app is running).

    :class:`~apimw_async.ConfigurationError` when there is none: the app does not use
    :func:`apimw_lifespan` (or a mounted sub-application is asked: mount lifespans do not run),
    or it has not started yet or has shut down.
    """
    client = getattr(app.state, STATE_KEY, None)
    if not isinstance(client, Client):
        raise ConfigurationError(
            f"no APIMW client on app.state.{STATE_KEY}: create the app with "
            "FastAPI(lifespan=apimw_lifespan(...)) (or set the attribute yourself) and use "
            "it only while the app is running"
        )
    return client


def get_client(connection: HTTPConnection) -> Client:
    """FastAPI dependency: the app's shared :class:`Client` (``Depends(get_client)``).

    Works for HTTP and WebSocket routes. Prefer the annotated alias :data:`ClientDep`.
    """
    return get_app_client(connection.app)


#: ``client: ClientDep`` in a path operation's signature receives the app's shared client.
ClientDep = Annotated[Client, Depends(get_client)]


_TOO_LARGE: Final = b"request body too large"


def webhook_endpoint(
    receiver: WebhookReceiver,
    *,
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
) -> Callable[[Request], Awaitable[Response]]:
    """A path operation function feeding deliveries to ``receiver``.

    For ``app.add_api_route(path, webhook_endpoint(receiver), methods=["POST"])`` when
    :func:`webhook_router` does not fit; then start and close the receiver yourself
    (``await receiver.start()`` and ``await receiver.aclose()`` in your lifespan). The body
    is read as the raw bytes the signature covers (never re-serialised JSON); a body over
    ``max_body_size`` bytes (``None``: no limit) gets 413 without being read further.
    """
    if max_body_size is not None and (
        isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 1
    ):
        raise ConfigurationError("max_body_size must be a positive integer or None")

    async def apimw_webhook(request: Request) -> Response:
        try:
            raw_body = await _read_body(request, max_body_size)
        except ClientDisconnect:  # the sender went away: nobody reads this answer
            return Response(b"", status_code=400)
        if raw_body is None:
            return Response(_TOO_LARGE, status_code=413, media_type="text/plain")
        reply = await receiver.receive(raw_body, request.headers)
        return Response(
            reply.body,
            status_code=reply.status,
            media_type=reply.content_type,
            headers=dict(reply.headers) if reply.headers else None,
        )

    return apimw_webhook


async def _read_body(request: Request, limit: int | None) -> bytes | None:
    """The raw body, or ``None`` when it is larger than ``limit``."""
    if limit is None:
        return await request.body()
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_router(
    receiver: WebhookReceiver,
    path: str = "/webhooks",
    *,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
    include_in_schema: bool = False,
) -> APIRouter:
    """An :class:`~fastapi.APIRouter` serving ``receiver`` at ``POST path``.

    Add it with ``app.include_router(webhook_router(receiver))`` (``prefix``, ``dependencies``
    and ``tags`` of ``include_router`` apply as usual). Other methods get 405. The router's
    lifespan starts the receiver (a queue's consumers) and closes it when the app shuts down
    (FastAPI runs the lifespans of included routers, inside the app's own, so handlers still
    have the client of :func:`apimw_lifespan`): running handlers get ``close_timeout`` seconds
    to finish, then are cancelled (``None``: wait however long they take). A receiver serves
    one app run.

    The route is left out of the OpenAPI schema unless ``include_in_schema``. Needs FastAPI
    0.112.2 or later (earlier versions ignore the lifespans of included routers); with an
    older one, use :func:`webhook_endpoint` and close the receiver in your lifespan.
    """
    if not _ROUTER_LIFESPANS:
        raise ConfigurationError(
            f"webhook_router needs FastAPI >= 0.112.2 to close the receiver at shutdown (this is "
            f"{_fastapi_version}): upgrade, or use webhook_endpoint() and close the receiver in "
            "your own lifespan"
        )

    @asynccontextmanager
    async def run_receiver(_app: Any) -> AsyncIterator[None]:
        await receiver.start()
        try:
            yield
        finally:
            await receiver.aclose(close_timeout)

    router = APIRouter(lifespan=run_receiver)
    router.add_api_route(
        path,
        webhook_endpoint(receiver, max_body_size=max_body_size),
        methods=["POST"],
        include_in_schema=include_in_schema,
        name="apimw_webhook",
    )
    return router
