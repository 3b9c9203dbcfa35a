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


# The parsers run on every typed result. JSON decodes to dict, list, str, int, float, bool and
# None only, so an exact ``type(...) is`` check settles the usual case before the slower
# isinstance/ABC checks; ``where`` labels are constants, and messages are built only to raise.


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if type(value) is kind:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedResponseError(f"{where}: field {key!r} is missing or has the wrong type")
    return value


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None or type(value) is str:
        return value
    if not isinstance(value, str):
        raise MalformedResponseError(f"{where}: field {key!r} has the wrong type")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    if not isinstance(value, Mapping):
        raise MalformedResponseError(f"{where}: expected an object")
    return value


def _str_list(value: Any) -> tuple[str, ...] | None:
    """``value`` as a tuple of strings, or ``None`` if it is not a list of strings."""
    if type(value) is not list and not isinstance(value, list):
        return None
    items = tuple(value)
    for item in items:
        if type(item) is not str and not isinstance(item, str):
            return None
    return items


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
        # The documented shape, checked inline (this runs on every ``me()``); anything else
        # goes through the field-by-field checks below, which name what is wrong.
        if type(data) is dict:
            user, tenant = data.get("user"), data.get("tenant")
            perms = data.get("permissions")
            if type(user) is dict and type(tenant) is dict and type(perms) is list:
                uid, email, name = user.get("id"), user.get("email"), user.get("name")
                tid, tname = tenant.get("id"), tenant.get("name")
                plan, status = tenant.get("plan"), tenant.get("status")
                permissions = tuple(perms)
                if (
                    type(uid) is str
                    and type(tid) is str
                    and (email is None or type(email) is str)
                    and (name is None or type(name) is str)
                    and (tname is None or type(tname) is str)
                    and (plan is None or type(plan) is str)
                    and (status is None or type(status) is str)
                    and all(type(p) is str for p in permissions)
                ):
                    return cls(
                        User(uid, email, name), Tenant(tid, tname, plan, status), permissions
                    )
        return cls._checked(data)

    @classmethod
    def _checked(cls, data: Any) -> CurrentUser:
        body = _mapping(data, "auth/me")
        user = _mapping(body.get("user"), "auth/me user")
        tenant = _mapping(body.get("tenant"), "auth/me tenant")
        perms = body.get("permissions")
        permissions = () if perms is None else _str_list(perms)
        if permissions is None:
            raise MalformedResponseError("auth/me: permissions must be a list of strings")
        return cls(
            user=User(
                id=_require(user, "id", str, "auth/me user"),
                email=_optional_str(user, "email", "auth/me user"),
                name=_optional_str(user, "name", "auth/me user"),
            ),
            tenant=Tenant(
                id=_require(tenant, "id", str, "auth/me tenant"),
                name=_optional_str(tenant, "name", "auth/me tenant"),
                plan=_optional_str(tenant, "plan", "auth/me tenant"),
                status=_optional_str(tenant, "status", "auth/me tenant"),
            ),
            permissions=permissions,
        )
