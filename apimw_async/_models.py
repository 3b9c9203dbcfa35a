"""Value types: credentials, tokens and API results.

All are frozen attrs classes. Secrets (the API secret, access and refresh tokens) are excluded
from ``repr``/``str``; where something must identify a token in a log, :func:`fingerprint`
gives a short one-way digest instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import attrs

from ._config import ENV_API_KEY, ENV_API_SECRET
from ._errors import ConfigurationError, MalformedResponseError

__all__ = [
    "Credentials",
    "CurrentUser",
    "Tenant",
    "Token",
    "User",
    "fingerprint",
    "header_safe",
]


def fingerprint(secret: str | None) -> str:
    """A short, one-way identifier of a secret, safe to log (first 8 hex of its SHA-256)."""
    if not secret:
        return "-"
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def header_safe(value: str) -> bool:
    """Whether ``value`` can go into an HTTP header as one token: visible ASCII, no spaces.

    A bearer token holding CR/LF (or anything outside Latin-1) makes aiohttp refuse every
    request that carries it, for the token's whole life: such a token is a malformed answer.
    """
    return bool(value) and all("!" <= c <= "~" for c in value)


def _mask_key(api_key: str) -> str:
    # The key identifies an account; show only enough to tell keys apart in a log.
    return api_key[:8] + "…" if len(api_key) > 12 else "…"


def _non_empty(name: str) -> Any:
    def check(_: Any, __: Any, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{name} must be a non-empty string")

    return check


@attrs.frozen(repr=False)
class Credentials:
    """An APIMW API key and secret, used only to mint access tokens.

    >>> Credentials("ak_live_abc123xyz", "sk_live_secret456")
    Credentials(api_key='ak_live_…', api_secret=***)
    """

    api_key: str = attrs.field(validator=_non_empty("api_key"))
    api_secret: str = attrs.field(validator=_non_empty("api_secret"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Read ``APIMW_API_KEY`` and ``APIMW_API_SECRET`` (surrounding whitespace dropped)."""
        env = os.environ if environ is None else environ
        values = []
        for name in (ENV_API_KEY, ENV_API_SECRET):
            value = env.get(name, "").strip()
            if not value:
                raise ConfigurationError(f"environment variable {name} is not set or is empty")
            values.append(value)
        return cls(values[0], values[1])

    @property
    def key_fingerprint(self) -> str:
        """A one-way digest of the API key, e.g. for per-key storage names."""
        return fingerprint(self.api_key)

    def __repr__(self) -> str:
        return f"Credentials(api_key={_mask_key(self.api_key)!r}, api_secret=***)"

    __str__ = __repr__


@attrs.frozen(repr=False, eq=False)
class Token:
    """An access token as issued by ``/auth/token`` or ``/auth/refresh``, with its deadlines.

    ``obtained_at``, ``refresh_at`` and ``expires_at`` are readings of the token manager's
    monotonic clock: ``obtained_at`` is when the token *request was sent* (so network latency
    shortens the lifetime rather than extending it), ``refresh_at`` when a background refresh
    should start, ``expires_at`` when the token must no longer be used (a safety margin before
    the server's expiry). ``issued_at`` is the wall-clock time of the same moment.
    """

    access_token: str
    token_type: str
    expires_in: float
    refresh_token: str | None
    obtained_at: float
    refresh_at: float
    expires_at: float
    issued_at: float
    _authorization: str = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Built once: the header is read on every request.
        scheme = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        object.__setattr__(self, "_authorization", f"{scheme} {self.access_token}")

    @property
    def authorization(self) -> str:
        """The value of the ``Authorization`` header for this token."""
        return self._authorization

    @property
    def fingerprint(self) -> str:
        """A short one-way digest of the access token, safe to log."""
        return fingerprint(self.access_token)

    def needs_refresh(self, now: float) -> bool:
        """Whether the token is inside its refresh window (``now`` on the manager's clock)."""
        return now >= self.refresh_at

    def is_expired(self, now: float) -> bool:
        """Whether the token must no longer be used (``now`` on the manager's clock)."""
        return now >= self.expires_at

    def remaining(self, now: float) -> float:
        """Seconds of usable life left (negative once expired)."""
        return self.expires_at - now

    def __repr__(self) -> str:
        return (
            f"Token(token_type={self.token_type!r}, expires_in={self.expires_in!r}, "
            f"fingerprint={self.fingerprint!r}, "
            f"refresh_token={'***' if self.refresh_token else None})"
        )

    __str__ = __repr__


# --- results ---------------------------------------------------------------------------------


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedResponseError(f"{where}: field {key!r} is missing or has the wrong type")
    return value


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedResponseError(f"{where}: field {key!r} has the wrong type")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedResponseError(f"{where}: expected an object")
    return value


@attrs.frozen
class User:
    """The authenticated user (``data.user`` of ``GET /auth/me``)."""

    id: str
    email: str | None = None
    name: str | None = None


@attrs.frozen
class Tenant:
    """The user's organisation (``data.tenant`` of ``GET /auth/me``)."""

    id: str
    name: str | None = None
    plan: str | None = None
    status: str | None = None


@attrs.frozen
class CurrentUser:
    """Result of ``GET /auth/me``: who the token belongs to and what it may do."""

    user: User
    tenant: Tenant
    permissions: tuple[str, ...]

    def has_permission(self, permission: str) -> bool:
        """Whether ``permission`` (e.g. ``"whatsapp:send"``) was granted."""
        return permission in self.permissions

    @classmethod
    def from_data(cls, data: Any) -> CurrentUser:
        """Build from the envelope's ``data``; :class:`MalformedResponseError` if it is off."""
        where = "auth/me"
        body = _mapping(data, where)
        user = _mapping(body.get("user"), f"{where} user")
        tenant = _mapping(body.get("tenant"), f"{where} tenant")
        perms = body.get("permissions", [])
        if perms is None:
            perms = []
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise MalformedResponseError(f"{where}: permissions must be a list of strings")
        return cls(
            user=User(
                id=_require(user, "id", str, f"{where} user"),
                email=_optional_str(user, "email", f"{where} user"),
                name=_optional_str(user, "name", f"{where} user"),
            ),
            tenant=Tenant(
                id=_require(tenant, "id", str, f"{where} tenant"),
                name=_optional_str(tenant, "name", f"{where} tenant"),
                plan=_optional_str(tenant, "plan", f"{where} tenant"),
                status=_optional_str(tenant, "status", f"{where} tenant"),
            ),
            permissions=tuple(perms),
        )
