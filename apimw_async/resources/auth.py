"""``client.auth``: the current user and token revocation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._models import CurrentUser

if TYPE_CHECKING:
    from .._client import Client

__all__ = ["AuthResource"]


class AuthResource:
    """The ``/auth`` endpoints that use a bearer token."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def me(self) -> CurrentUser:
        """``GET /auth/me``: who the token belongs to, the tenant and its permissions.

        >>> me = await client.auth.me()            # doctest: +SKIP
        >>> me.tenant.plan, me.has_permission("whatsapp:send")
        ('professional', True)
        """
        response = await self._client.request("GET", "/auth/me")
        return CurrentUser.from_data(response.data)

    async def revoke(self) -> bool:
        """``POST /auth/revoke`` for the current access token, and forget the local pair.

        The next call obtains a new token with the credentials. Returns ``True`` if the server
        revoked a token now (``False`` if there was none or it was already unusable).

        >>> await client.auth.revoke()             # doctest: +SKIP
        True
        """
        return await self._client.tokens.revoke()
