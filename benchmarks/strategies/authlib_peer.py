"""authlib: ``AsyncOAuth2Client`` (httpx) adapted to APIMW with authlib's own extension points.

APIMW is not RFC 6749: credentials go as ``{"api_key", "api_secret"}`` JSON to ``auth/token``,
the refresh goes as ``{"refresh_token"}`` JSON to a *different* path, ``auth/refresh``, and both
answers are wrapped in ``{"success": true, "data": {...}}``. A competent authlib user adapts
that as authlib's docs show for non-compliant providers:

* a client authentication method (``register_client_auth_method``) that turns the form body
  authlib prepares into APIMW's JSON body (credentials for ``client_credentials``, the refresh
  token for ``refresh_token``);
* a ``refresh_token_request`` compliance hook that points refreshes at ``auth/refresh``;
* ``access_token_response`` / ``refresh_token_response`` compliance hooks that unwrap the
  envelope, and turn an error envelope into an OAuth error (``{"error": code, ...}``);
* ``grant_type="client_credentials"`` metadata and ``leeway`` = the common refresh skew.

authlib then renews the token inside ``ensure_active_token`` under its ``anyio.Lock`` (taken on
every request), with the rotated refresh token it stores itself. The first token comes from
``fetch_token()``, which the wrapper calls behind a double-checked lock (``request()`` raises
``MissingTokenError`` without a token). authlib has no retries, no way back to the credentials
when a refresh token is refused, and no replay after a 401; the adapter adds none of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from authlib.common.urls import url_decode
from authlib.integrations.httpx_client import AsyncOAuth2Client

from ._httpx import HTTPX_NAME, httpx
from .base import Probe, Strategy

__all__ = ["AuthlibStrategy"]

AUTH_METHOD = "apimw_json"


def encode_apimw_json(
    client: Any, method: str, uri: str, headers: Any, body: Any
) -> tuple[str, Any, bytes]:
    """authlib client-auth method: APIMW's JSON body instead of an RFC 6749 form."""
    text = body.decode() if isinstance(body, bytes) else (body or "")
    form = dict(url_decode(text))
    if form.get("grant_type") == "refresh_token":
        payload = {"refresh_token": form["refresh_token"]}
    else:
        payload = {"api_key": client.client_id, "api_secret": client.client_secret}
    headers["Content-Type"] = "application/json"
    return uri, headers, json.dumps(payload).encode()


def refresh_endpoint(url: str, headers: Any, body: str) -> tuple[str, Any, str]:
    """``refresh_token_request`` hook: APIMW refreshes at ``auth/refresh``."""
    return url.replace("/auth/token", "/auth/refresh"), headers, body


def unwrap_envelope(resp: Any) -> Any:
    """``*_token_response`` hook: the token inside ``data``; an error as an OAuth error."""
    try:
        payload = resp.json()
    except ValueError:
        return resp
    if not isinstance(payload, dict) or "success" not in payload:
        return resp
    if payload["success"] is True:
        content: dict[str, Any] = payload["data"]
    else:
        error = payload.get("error") or {}
        content = {"error": error.get("code", "error"), "error_description": error.get("message")}
    return httpx.Response(resp.status_code, json=content, request=resp.request)


class _InstrumentedOAuth2Client(AsyncOAuth2Client):  # type: ignore[misc]
    """``AsyncOAuth2Client`` with counters only (the probe); behaviour unchanged."""

    probe: Probe
    instrument: bool

    async def ensure_active_token(self, token: Any) -> Any:
        acquire = super().ensure_active_token
        if self.instrument:
            return await self.probe.measure(lambda: acquire(token))
        return await acquire(token)

    async def _fetch_token(self, url: str, **kwargs: Any) -> Any:
        return await self._counted(super()._fetch_token(url, **kwargs))

    async def _refresh_token(self, url: str, **kwargs: Any) -> Any:
        return await self._counted(super()._refresh_token(url, **kwargs))

    async def _counted(self, call: Awaitable[Any]) -> Any:
        sent_at = self.probe.call_started()
        expires_in: float | None = None
        try:
            token = await call
            expires_in = float(token["expires_in"])
            return token
        finally:
            self.probe.call_finished(sent_at, expires_in)


class AuthlibStrategy(Strategy):
    name = "authlib"
    transport = HTTPX_NAME
    limitation = "no fallback to credentials, no retries, no 401 replay"

    async def start(self) -> None:
        env = self.env
        limit = env.connections
        client = _InstrumentedOAuth2Client(
            client_id=env.credentials.api_key,
            client_secret=env.credentials.api_secret,
            token_endpoint=f"{env.base_url}/auth/token",
            grant_type="client_credentials",
            token_endpoint_auth_method=AUTH_METHOD,
            leeway=env.skew,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=env.timeout,
        )
        client.probe = self.probe
        client.instrument = env.instrument
        client.register_client_auth_method((AUTH_METHOD, encode_apimw_json))
        client.register_compliance_hook("refresh_token_request", refresh_endpoint)
        client.register_compliance_hook("access_token_response", unwrap_envelope)
        client.register_compliance_hook("refresh_token_response", unwrap_envelope)
        self._client = client
        self._first_token = asyncio.Lock()

    async def _ensure_first_token(self) -> None:
        if not self._client.token:
            async with self._first_token:
                if not self._client.token:
                    await self._client.fetch_token()

    async def request(self) -> int:
        client = self._client
        if not client.token:
            await self._ensure_first_token()
        resp = await client.get(self.env.me_url)
        resp.json()
        return int(resp.status_code)

    def token_path(self) -> Callable[[], Awaitable[Any]]:
        client = self._client
        url = self.env.me_url

        async def path() -> Any:
            await client.ensure_active_token(client.token)
            return client.token_auth.prepare(url, {}, b"")

        return path

    async def close(self) -> None:
        await self._client.aclose()
