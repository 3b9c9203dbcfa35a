"""URL rules: which base URLs the SDK talks to, and which hosts count as this machine."""

from __future__ import annotations

import ipaddress

from yarl import URL

from ._errors import ConfigurationError

__all__ = ["is_loopback", "normalize_base_url"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP literal, brackets allowed) is this machine."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_base_url(
    base_url: str,
    *,
    allow_insecure_http: bool = False,
    insecure_hint: str = "pass allow_insecure_http=True",
) -> str:
    """Check a base URL and return it without a trailing slash.

    HTTPS is required; plain ``http`` is accepted for loopback hosts (the bundled fake server)
    or with ``allow_insecure_http=True``. ``insecure_hint`` is how the refusal tells the user to
    opt in (the CLI names its flag).
    """
    try:
        url = URL(base_url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"base_url {base_url!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"base_url {base_url!r} must be an absolute http(s) URL")
    if url.user or url.password:
        raise ConfigurationError("base_url must not carry credentials")
    if url.query_string or url.fragment:
        raise ConfigurationError("base_url must not carry a query or fragment")
    if url.scheme == "http" and not (is_loopback(url.host) or allow_insecure_http):
        raise ConfigurationError(
            f"refusing plain-http base_url for non-loopback host {url.host!r}: APIMW requires "
            f"HTTPS; {insecure_hint} to override (never in production)"
        )
    return str(url).rstrip("/")
