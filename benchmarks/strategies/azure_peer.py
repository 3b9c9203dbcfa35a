"""azure-core: ``AsyncBearerTokenCredentialPolicy`` with an APIMW credential.

The credential implements azure-core's ``AsyncSupportsTokenInfo`` protocol
(``get_token_info`` returning ``AccessTokenInfo`` with ``expires_on`` and ``refresh_on`` as the
documented integer Unix times; ``get_token`` too, for older policies). Like the credentials of
azure-identity it sends its token calls through an azure-core pipeline with the standard
``AsyncRetryPolicy``, so 500/503/504 answers to its POSTs are retried with azure's backoff;
the token logic is the hand-rolled one of :mod:`.handrolled` (refresh token first, the
credentials after ``INVALID_REFRESH_TOKEN``). ``refresh_on`` is the common skew before expiry.

The API client is an ``AsyncPipelineClient`` over aiohttp (``AioHttpTransport`` on an
aiohttp session) with ``[AsyncRetryPolicy(), AsyncBearerTokenCredentialPolicy(...)]``; requests
pass ``enforce_https=False`` because the fake server is plain HTTP on loopback. The policy
renews under its own ``asyncio.Lock``, in the request path, at ``refresh_on`` plus a random
0–60 s jitter capped at ``expires_on``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from azure.core import AsyncPipelineClient
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy, AsyncRetryPolicy
from azure.core.rest import HttpRequest

from .base import Env, Probe, Strategy
from .static_peers import azure_pipeline_client

__all__ = ["APIMWCredential", "AzureStrategy"]

SCOPE = "apimw"


class APIMWCredential:
    """An azure-core async credential that obtains APIMW access tokens."""

    def __init__(self, env: Env, probe: Probe) -> None:
        self._env = env
        self._probe = probe
        self._refresh_token: str | None = None
        self._pipeline: AsyncPipelineClient[HttpRequest, Any] = AsyncPipelineClient(
            env.base_url, policies=[AsyncRetryPolicy()]
        )

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        if self._refresh_token is not None:
            try:
                return await self._call("refresh", {"refresh_token": self._refresh_token})
            except ClientAuthenticationError as exc:
                if "INVALID_REFRESH_TOKEN" not in str(exc):
                    raise
                self._refresh_token = None
        creds = self._env.credentials
        return await self._call("token", {"api_key": creds.api_key, "api_secret": creds.api_secret})

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        info = await self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)

    async def _call(self, endpoint: str, body: dict[str, str]) -> AccessTokenInfo:
        sent_at = self._probe.call_started()
        sent_wall = time.time()
        expires_in: float | None = None
        try:
            request = HttpRequest("POST", f"{self._env.base_url}/auth/{endpoint}", json=body)
            resp = await self._pipeline.send_request(request)
            try:
                payload = resp.json()
            except ValueError:
                payload = {}
            if resp.status_code != 200 or not payload.get("success"):
                error = payload.get("error") or {}
                raise ClientAuthenticationError(
                    f"APIMW auth/{endpoint}: HTTP {resp.status_code} {error.get('code', '')}",
                    response=resp,
                )
            data = payload["data"]
            self._refresh_token = data.get("refresh_token")
            expires_in = float(data["expires_in"])
            skew = self._env.skew
            return AccessTokenInfo(
                data["access_token"],
                int(sent_wall + expires_in),
                refresh_on=int(sent_wall + expires_in - skew),
            )
        finally:
            self._probe.call_finished(sent_at, expires_in)

    async def close(self) -> None:
        await self._pipeline.close()

    async def __aenter__(self) -> APIMWCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _InstrumentedPolicy(AsyncBearerTokenCredentialPolicy):  # type: ignore[type-arg]
    """The stock policy with the probe timing ``on_request``; behaviour unchanged."""

    def __init__(self, credential: APIMWCredential, probe: Probe, *scopes: str) -> None:
        super().__init__(credential, *scopes)
        self._probe = probe

    async def on_request(self, request: PipelineRequest[Any]) -> None:
        parent = super().on_request
        await self._probe.measure(lambda: parent(request))


class AzureStrategy(Strategy):
    name = "azure-core"
    transport = "azure-core pipeline (aiohttp)"
    limitation = "no 401 replay (only for claims challenges)"

    async def start(self) -> None:
        env = self.env
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=env.connections),
            timeout=aiohttp.ClientTimeout(total=env.timeout),
        )
        self._credential = APIMWCredential(env, self.probe)
        if env.instrument:
            self._policy: AsyncBearerTokenCredentialPolicy[Any, Any] = _InstrumentedPolicy(
                self._credential, self.probe, SCOPE
            )
        else:
            self._policy = AsyncBearerTokenCredentialPolicy(self._credential, SCOPE)
        self._client = azure_pipeline_client(env, self._session, self._policy)

    async def request(self) -> int:
        resp = await self._client.send_request(
            HttpRequest("GET", self.env.me_url), enforce_https=False
        )
        resp.json()
        return int(resp.status_code)

    def token_path(self) -> Callable[[], Awaitable[Any]]:
        policy = self._policy
        request: PipelineRequest[Any] = PipelineRequest(
            HttpRequest("GET", self.env.me_url), PipelineContext(None, enforce_https=False)
        )

        async def path() -> Any:
            await policy.on_request(request)
            return request.http_request.headers["Authorization"]

        return path

    async def close(self) -> None:
        await self._client.close()
        await self._session.close()
        await self._credential.close()
