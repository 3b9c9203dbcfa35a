"""ISO-8601 timestamps as the API and its webhooks send them (``2024-01-15T10:30:00Z``)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Final

__all__ = ["parse_iso8601"]

# Python 3.10's fromisoformat takes exactly 3 or 6 fraction digits: pad or cut to 6.
_FRACTION: Final = re.compile(r"(?<=:\d\d)\.(\d+)")


def parse_iso8601(value: str, *, utc: bool = False) -> datetime | None:
    """``value`` as an aware ``datetime``, or ``None`` if it is not a readable ISO-8601 time.

    A ``Z`` suffix or any offset is understood (and kept, unless ``utc`` converts to UTC); a
    time without one is taken as UTC (the docs say all times are UTC).
    """
    text = value.strip()
    if not text.isascii():
        return None
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    if not utc:
        return parsed
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None
