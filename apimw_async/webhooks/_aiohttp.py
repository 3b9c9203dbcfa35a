"""aiohttp.web adapter for :class:`~apimw_async.webhooks.WebhookReceiver`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ._receiver import DEFAULT_CLOSE_TIMEOUT, WebhookReceiver

__all__ = ["aiohttp_handler", "make_aiohttp_app"]


def aiohttp_handler(receiver: WebhookReceiver) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp request handler that feeds deliveries to ``receiver``.

    Register it for your webhook path, e.g. ``app.router.add_post("/webhooks", handler)``,
    start the receiver at startup (``app.on_startup``, needed with a queue) and close it on
    shutdown (``app.on_cleanup``). Methods other than POST get 405.
    The body is read as raw bytes (the signature covers those exact bytes) and is limited by
    the application's ``client_max_size`` (1 MiB by default; larger bodies get 413).
    """

    async def handle(request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"}, text="method not allowed")
        raw_body = await request.read()
        reply = await receiver.receive(raw_body, request.headers)
        headers = {"Content-Type": reply.content_type}
        headers.update(reply.headers)
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    return handle


def make_aiohttp_app(
    receiver: WebhookReceiver,
    path: str = "/webhooks",
    *,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
) -> web.Application:
    """A ready :class:`aiohttp.web.Application` serving ``receiver`` at ``path``.

    All methods are routed to the handler (non-POST gets 405). On application startup the
    receiver is started (:meth:`WebhookReceiver.start`: a queue's consumers begin); on cleanup
    it is closed: running handlers get ``close_timeout`` seconds, then are cancelled (see
    :meth:`WebhookReceiver.aclose`).
    """
    app = web.Application()
    app.router.add_route("*", path, aiohttp_handler(receiver))

    async def start_receiver(_: web.Application) -> None:
        await receiver.start()

    async def close_receiver(_: web.Application) -> None:
        await receiver.aclose(close_timeout)

    app.on_startup.append(start_receiver)
    app.on_cleanup.append(close_receiver)
    return app
