"""The fixed-header baselines on the peers' transports (the ``bench`` extra): ``static-httpx``
and ``static-azure``; see :mod:`.static`."""

from __future__ import annotations

from typing import Any

import aiohttp
from azure.core import AsyncPipelineClient
from azure.core.pipeline.policies import AsyncRetryPolicy, HeadersPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest

from ._httpx import HTTPX_NAME, httpx
from .base import Env
from .static import _Static

__all__ = ["StaticAzureStrategy", "StaticHttpxStrategy", "azure_pipeline_client"]


class StaticHttpxStrategy(_Static):
    name = "static-httpx"
    transport = HTTPX_NAME

    async def start(self) -> None:
        limit = self.env.connections
        self._client = httpx.AsyncClient(
            headers={"Authorization": self._header},
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=self.env.timeout,
        )

    async def request(self) -> int:
        await self._probe()
        resp = await self._client.get(self.env.me_url)
        resp.json()
        return int(resp.status_code)

    async def close(self) -> None:
        await self._client.aclose()


def azure_pipeline_client(
    env: Env, session: aiohttp.ClientSession, auth_policy: Any
) -> AsyncPipelineClient[HttpRequest, Any]:
    """The API client an azure-core user builds: retries outside, authentication inside."""
    return AsyncPipelineClient(
        env.base_url,
        policies=[AsyncRetryPolicy(), auth_policy],
        transport=AioHttpTransport(session=session, session_owner=False),
    )


class StaticAzureStrategy(_Static):
    name = "static-azure"
    transport = "azure-core pipeline (aiohttp)"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.env.connections),
            timeout=aiohttp.ClientTimeout(total=self.env.timeout),
        )
        self._client = azure_pipeline_client(
            self.env, self._session, HeadersPolicy({"Authorization": self._header})
        )

    async def request(self) -> int:
        await self._probe()
        resp = await self._client.send_request(HttpRequest("GET", self.env.me_url))
        resp.json()
        return int(resp.status_code)

    async def close(self) -> None:
        await self._client.close()
        await self._session.close()
