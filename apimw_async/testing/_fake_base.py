"""What the fake server's modules share: envelopes, the endpoint registry, counters.

:mod:`._fake_server` is the hub (:class:`~._fake_server.FakeAPIMW`: lifecycle, dispatch, rate
limits) and asks :mod:`._fake_faults` for the fault of each request; :mod:`._fake_auth`,
:mod:`._fake_whatsapp` and :mod:`._fake_webhooks` add the auth, WhatsApp and webhook endpoints
as mixins. They all build on this module, which imports none of them.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple, TypeVar

import attrs
from aiohttp import web

from .._clock import Clock

_JSON: Final = "application/json"
_HTML: Final = "text/html; charset=utf-8"
_API_PREFIX: Final = "/v1"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _iso(epoch: float) -> str:
    """``2024-01-15T10:30:00Z``: ISO-8601 UTC, whole seconds, as in the docs' examples."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch // 1)))


# --- replies and envelopes -------------------------------------------------------------------


class _Reply(NamedTuple):
    """What a handler answers; the dispatcher turns it into a response with the common headers."""

    status: int
    body: bytes
    content_type: str = _JSON
    headers: dict[str, str] | None = None


def _ok(data: Any, status: int = 200) -> _Reply:
    return _Reply(status, _compact_json({"success": True, "data": data}))


@functools.lru_cache(maxsize=512)
def _error_body(code: str, message: str, retry_after: int | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if retry_after is not None:
        error["retry_after"] = retry_after
    return _compact_json({"success": False, "error": error})


def _error(
    status: int,
    code: str,
    message: str,
    *,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> _Reply:
    return _Reply(status, _error_body(code, message, retry_after), _JSON, headers)


def _invalid(message: str) -> _Reply:
    """400 ``INVALID_REQUEST``: the body or query is missing something or has a wrong type."""
    return _error(400, "INVALID_REQUEST", message)


_BAD_JSON: Final = _invalid("Request body must be a JSON object")


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any] | None:
    """The request body as a JSON object; ``None`` if it is not one ({} if empty and optional)."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _required_str(body: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


# --- statistics ------------------------------------------------------------------------------


@attrs.define
class FakeStats:
    """Counters of what :class:`FakeAPIMW` received, answered and delivered.

    ``*_successes`` count operations the server committed, even when an ``after=True`` fault
    then replaced the answer. ``calls`` counts requests per endpoint name (``"token"``,
    ``"refresh"``, ``"revoke"``, ``"me"``, ``"send"``, ``"template"``, ``"status"``,
    ``"templates"``, ``"webhooks"``).
    """

    requests: int = 0
    """Every request received, including unknown paths."""
    token_calls: int = 0
    """Every ``POST /auth/token``."""
    token_successes: int = 0
    token_calls_with_bearer: int = 0
    """Token or refresh calls that carried an ``Authorization`` header (clients must not)."""
    refresh_calls: int = 0
    refresh_successes: int = 0
    refresh_reuse: int = 0
    """A refresh token presented again after it was spent."""
    invalid_refresh: int = 0
    """Every ``INVALID_REFRESH_TOKEN`` answer."""
    invalid_credentials: int = 0
    revoke_calls: int = 0
    me_calls: int = 0
    api_calls: int = 0
    """Every request to an endpoint other than token and refresh (``me`` and ``revoke`` too)."""
    unauthorized: int = 0
    """401 answers on bearer-authenticated endpoints (injected ones included)."""
    families_revoked: int = 0
    """Token families revoked by reuse detection."""
    faults_injected: int = 0
    unknown_requests: int = 0
    """Requests that matched no endpoint (answered 404 or 405)."""
    rate_limited: int = 0
    """429 answers of the enforced per-plan rate limit (injected 429 faults not included)."""
    messages_sent: int = 0
    """Text and template messages accepted (``send`` and ``template`` answers 200)."""
    webhooks_registered: int = 0
    verifications: int = 0
    """Webhook ownership handshakes the receiver answered with the challenge."""
    verification_failures: int = 0
    """Handshakes answered wrongly, not with 200, too late, or not at all."""
    deliveries: int = 0
    """Event deliveries the receiver answered with 200 (duplicates included)."""
    delivery_failures: int = 0
    """Delivery attempts without a 200 in time (each retry counts)."""
    duplicate_deliveries: int = 0
    """Events deliberately sent a second time (``duplicate_deliveries`` option)."""
    webhooks_disabled: int = 0
    """Webhooks switched off after an event failed every attempt of the retry schedule."""
    injected_deliveries: int = 0
    """Requests sent by :meth:`FakeAPIMW.inject_delivery` (not in ``deliveries``)."""
    calls: dict[str, int] = attrs.field(factory=dict)

    def reset(self) -> None:
        """Set every counter back to zero."""
        for field in attrs.fields(type(self)):
            if field.name != "calls":
                setattr(self, field.name, 0)
        self.calls.clear()

    def as_dict(self) -> dict[str, Any]:
        """A snapshot of all counters (``calls`` copied), e.g. for assertions or printing."""
        return attrs.asdict(self)


# --- endpoint registry -----------------------------------------------------------------------


@attrs.frozen
class _Route:
    name: str
    method: str
    path: str
    """Below ``/v1``."""
    handler: str
    """Name of the :class:`FakeAPIMW` method, looked up per instance so subclasses can override."""
    counter: str | None
    """The :class:`FakeStats` attribute counting calls, besides ``calls[name]``."""
    token_endpoint: bool
    """Credential/refresh endpoints: ``token_latency``, no bearer, not an ``api_call``."""
    bearer: bool
    """Bearer-authenticated: its 401s count as ``unauthorized``; rate-limited when enforced."""


_ROUTES: list[_Route] = []

_HandlerT = TypeVar("_HandlerT", bound=Callable[..., Awaitable[_Reply]])


def _endpoint(
    name: str,
    method: str,
    path: str,
    *,
    counter: str | None = None,
    token_endpoint: bool = False,
    bearer: bool = True,
) -> Callable[[_HandlerT], _HandlerT]:
    """Register a :class:`FakeAPIMW` method as the handler of endpoint ``name``.

    The dispatcher does the counting, latency, rate limit, faults and common headers, so a new
    endpoint is only this decorator on a method ``(self, request) -> _Reply``. Static paths
    must be registered before dynamic ones that could also match them.
    """

    def register(handler: _HandlerT) -> _HandlerT:
        if any(route.name == name for route in _ROUTES):
            raise ValueError(f"endpoint {name!r} is registered twice")
        _ROUTES.append(
            _Route(name, method, path, handler.__name__, counter, token_endpoint, bearer)
        )
        return handler

    return register


class _FakeCore:
    """What the feature mixins may use of :class:`FakeAPIMW` (which implements it)."""

    clock: Clock
    stats: FakeStats

    def _authenticate(self, request: web.Request) -> _Reply | None:
        """``None`` if the bearer token is valid now, else the 401 to answer."""
        raise NotImplementedError

    def _changed(self) -> None:
        """Wake whatever waits on the stats or on webhook work."""
        raise NotImplementedError

    async def _authorized_body(self, request: web.Request) -> dict[str, Any] | _Reply:
        """The JSON object body of a bearer-authenticated request, or the error to answer."""
        failure = self._authenticate(request)
        if failure is not None:
            return failure
        body = await _json_object(request)
        return _BAD_JSON if body is None else body

    def _message_event(self, event_type: str, data: dict[str, Any], at_wall: float) -> None:
        """Deliver a message event now to the subscribed webhooks (webhooks mixin)."""
        raise NotImplementedError

    def _schedule_message_event(
        self, due: float, event_type: str, data: dict[str, Any], at_wall: float
    ) -> None:
        """Deliver a message event once ``clock.monotonic()`` reaches ``due`` (webhooks mixin)."""
        raise NotImplementedError

    def _wants_message_events(self, event_type: str) -> bool:
        """Whether any webhook subscribes to ``event_type`` (else it needs no scheduling)."""
        raise NotImplementedError
