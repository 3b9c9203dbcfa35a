"""The fake server's fault plan: queued and probabilistic errors, drops, garbage and delays.

:class:`FaultPlan` is ``FakeAPIMW.faults``; the dispatcher of :mod:`._fake_server` asks it for
the fault of each request (:meth:`FaultPlan._take`) and answers it with :func:`_fault_reply`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Final

import attrs

from ._fake_base import _HTML, _error, _Reply

#: The kinds of fault :meth:`FaultPlan.add` accepts.
FAULT_KINDS: Final = frozenset({"status", "drop", "malformed", "delay"})

_DEFAULT_MALFORMED_BODY: Final = b"<html>bad gateway</html>"

#: The fault codes used when :meth:`FaultPlan.add` is given a status but no code.
_DEFAULT_CODES: Final = {
    400: "INVALID_REQUEST",
    401: "INVALID_TOKEN",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
}


@attrs.frozen
class _Fault:
    kind: str
    status: int
    code: str | None = None
    message: str | None = None
    retry_after: int | None = None
    retry_after_header: bool = False
    after: bool = False
    delay: float = 0.0
    body: bytes | None = None
    content_type: str | None = None


@attrs.define
class _Queued:
    endpoint: str
    fault: _Fault
    remaining: int


@attrs.frozen
class _Rates:
    error_500: float
    error_429: float
    drop: float
    malformed: float
    retry_after: int
    retry_after_header: bool
    after: bool


class FaultPlan:
    """Faults :class:`FakeAPIMW` injects, per endpoint name (``"*"`` matches every endpoint).

    Queued faults (:meth:`add`) are consumed first, in the order they were added; when none
    matches, the probabilistic rates (:meth:`set_rate`) are rolled. At most one fault applies to
    a request. Fault kinds:

    ``"status"``
        an error envelope with ``status`` and ``code``; a 429 carries ``error.retry_after``.
    ``"drop"``
        the connection is closed without any HTTP response (aiohttp raises
        ``ServerDisconnectedError`` or ``ClientOSError``). Note that aiohttp's client retries an
        *idempotent* request (GET, e.g. ``/auth/me``) once by itself after such a disconnect, so
        to make a GET fail use ``times=2``.
    ``"malformed"``
        a body that is not the envelope (default ``200`` with ``<html>bad gateway</html>``).
    ``"delay"``
        the request waits ``delay`` seconds (real time) and is then answered normally.

    With ``after=True`` the server first performs the operation (issues or rotates tokens,
    revokes, ...) and only then replaces the answer with the fault: the answer is lost but the
    state is committed. A ``"delay"`` with ``after=True`` commits first, then waits, then
    answers. Every injected fault counts in :attr:`FakeStats.faults_injected`.
    """

    def __init__(self, endpoints: Iterable[str] | None = None, *, seed: int | None = None) -> None:
        self._endpoints = frozenset(endpoints) if endpoints is not None else None
        self._queue: list[_Queued] = []
        self._rates: dict[str, _Rates] = {}
        self._random = random.Random(seed)

    def add(
        self,
        endpoint: str,
        kind: str = "status",
        *,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        retry_after_header: bool = False,
        times: int = 1,
        after: bool = False,
        delay: float = 0.0,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        """Queue a fault for the next ``times`` calls of ``endpoint`` (``"*"`` = any endpoint).

        ``status`` defaults to 500 for ``"status"`` and 200 for ``"malformed"``; ``code``
        defaults to ``INTERNAL_ERROR`` for 5xx and ``RATE_LIMIT_EXCEEDED`` for 429 (whose
        ``error.retry_after`` defaults to 1). A ``Retry-After`` header is sent only with
        ``retry_after_header=True``. ``body``/``content_type`` replace a malformed body.
        """
        self._check_endpoint(endpoint)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if status is None:
            status = 200 if kind == "malformed" else 500
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError("a status fault needs an error status (400-599)")
        if kind == "status" and status == 429 and retry_after is None:
            retry_after = 1
        fault = _Fault(
            kind=kind,
            status=status,
            code=code,
            message=message,
            retry_after=retry_after,
            retry_after_header=retry_after_header,
            after=after,
            delay=delay,
            body=body,
            content_type=content_type,
        )
        self._queue.append(_Queued(endpoint, fault, times))

    def set_rate(
        self,
        endpoint: str,
        *,
        error_500: float = 0.0,
        error_429: float = 0.0,
        drop: float = 0.0,
        malformed: float = 0.0,
        retry_after: int = 1,
        retry_after_header: bool = False,
        after: bool = False,
    ) -> None:
        """Inject faults at random, each call independently, with these probabilities.

        Rates of ``endpoint`` replace earlier ones; an endpoint without its own rates uses
        those of ``"*"``. All zero removes the rates. Reproducible with ``FakeAPIMW(seed=...)``.
        """
        self._check_endpoint(endpoint)
        probabilities = (error_500, error_429, drop, malformed)
        if any(not 0.0 <= p <= 1.0 for p in probabilities) or sum(probabilities) > 1.0 + 1e-9:
            raise ValueError("rates must lie in [0, 1] and add up to at most 1")
        if not any(probabilities):
            self._rates.pop(endpoint, None)
            return
        self._rates[endpoint] = _Rates(
            error_500, error_429, drop, malformed, retry_after, retry_after_header, after
        )

    def clear(self) -> None:
        """Forget every queued fault and every rate."""
        self._queue.clear()
        self._rates.clear()

    def pending(self, endpoint: str | None = None) -> int:
        """How many queued fault occurrences are left (for ``endpoint`` only, if given)."""
        return sum(q.remaining for q in self._queue if endpoint is None or q.endpoint == endpoint)

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint != "*" and self._endpoints is not None and endpoint not in self._endpoints:
            raise ValueError(
                f"unknown endpoint {endpoint!r}; expected '*' or one of {sorted(self._endpoints)}"
            )

    def _take(self, endpoint: str) -> _Fault | None:
        """The fault for this call of ``endpoint``, if any (consumes a queued one)."""
        queue = self._queue
        for index, queued in enumerate(queue):
            if queued.endpoint == endpoint or queued.endpoint == "*":
                queued.remaining -= 1
                if queued.remaining <= 0:
                    del queue[index]
                return queued.fault
        if not self._rates:
            return None
        rates = self._rates.get(endpoint) or self._rates.get("*")
        if rates is None:
            return None
        roll = self._random.random()
        if roll < rates.error_500:
            return _Fault("status", 500, after=rates.after)
        roll -= rates.error_500
        if roll < rates.error_429:
            return _Fault(
                "status",
                429,
                retry_after=rates.retry_after,
                retry_after_header=rates.retry_after_header,
                after=rates.after,
            )
        roll -= rates.error_429
        if roll < rates.drop:
            return _Fault("drop", 0, after=rates.after)
        roll -= rates.drop
        if roll < rates.malformed:
            return _Fault("malformed", 200, after=rates.after)
        return None

    def __repr__(self) -> str:
        return f"FaultPlan(pending={self.pending()}, rates={sorted(self._rates)})"


def _fault_reply(fault: _Fault) -> _Reply:
    if fault.kind == "malformed":
        body = _DEFAULT_MALFORMED_BODY if fault.body is None else fault.body
        return _Reply(fault.status, body, fault.content_type or _HTML)
    status = fault.status
    code = (
        fault.code or _DEFAULT_CODES.get(status) or ("INTERNAL_ERROR" if status >= 500 else "ERROR")
    )
    if fault.message is not None:
        message = fault.message
    elif status == 429:
        message = f"Rate limit exceeded. Please retry after {fault.retry_after} seconds."
    else:
        message = "Internal server error" if status >= 500 else "Injected fault"
    headers: dict[str, str] = {}
    if fault.retry_after is not None and fault.retry_after_header:
        headers["Retry-After"] = str(fault.retry_after)
    if status == 429:
        headers["X-RateLimit-Remaining"] = "0"
    return _error(status, code, message, retry_after=fault.retry_after, headers=headers or None)
