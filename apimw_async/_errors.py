"""The exception tree of ``apimw_async``.

Every error the SDK raises on purpose derives from :class:`APIMWError`::

    APIMWError
    ├── ConfigurationError          bad argument, missing env var, refused plain-http URL
    ├── ValidationError             a request argument breaks a documented rule (sent nothing)
    ├── ClientClosedError           the client or token manager was closed
    ├── MalformedResponseError      a body that is not the documented envelope / shape
    ├── TokenUnavailableError       no valid token could be obtained in time (wraps the cause)
    ├── StoreUnavailableError       a shared token store (Redis) cannot be reached
    ├── APIConnectionError          the request did not complete (DNS, refused, reset ...)
    │   └── APITimeoutError         ... because it took too long
    │       └── PoolTimeoutError    ... waiting for a connection slot (never sent)
    └── APIStatusError              the server answered with an error (status, code, message)
        ├── BadRequestError         400 / 422
        │   └── InvalidPhoneNumberError   INVALID_PHONE_NUMBER
        ├── AuthenticationError     401
        │   ├── InvalidCredentialsError   INVALID_CREDENTIALS (permanent; never retried)
        │   ├── InvalidRefreshTokenError  INVALID_REFRESH_TOKEN (falls back to credentials)
        │   └── AccessTokenError          a bearer token was refused (replayed once)
        │       ├── ExpiredTokenError     EXPIRED_TOKEN
        │       ├── InvalidTokenError     INVALID_TOKEN
        │       └── RevokedTokenError     REVOKED_TOKEN
        ├── PermissionDeniedError   403
        ├── NotFoundError           404
        ├── ConflictError           409
        ├── RateLimitError          429 RATE_LIMIT_EXCEEDED (``retry_after`` in seconds)
        └── ServerError             5xx

Each error carries the HTTP ``status`` and APIMW error ``code`` where there is one (``None``
otherwise). Messages never contain credentials, tokens or request bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIMWError",
    "APIStatusError",
    "APITimeoutError",
    "AccessTokenError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ExpiredTokenError",
    "InvalidCredentialsError",
    "InvalidPhoneNumberError",
    "InvalidRefreshTokenError",
    "InvalidTokenError",
    "MalformedResponseError",
    "NotFoundError",
    "PermissionDeniedError",
    "PoolTimeoutError",
    "RateLimitError",
    "RevokedTokenError",
    "ServerError",
    "StoreUnavailableError",
    "TokenUnavailableError",
    "ValidationError",
    "error_from_status",
    "is_token_refusal",
]


class APIMWError(Exception):
    """Base class of every error raised by ``apimw_async``.

    ``status`` is the HTTP status and ``code`` the APIMW error code, where there is one.
    """

    status: int | None = None
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*args)``, which fails for keyword-only arguments such as
        # ``status``: rebuild from the message and the attributes instead, so errors cross
        # process pools, Celery results and multiprocessing queues. (``__cause__`` and the
        # traceback do not travel, as for any exception.)
        return (_rebuild, (type(self), self.message), dict(self.__dict__))


def _rebuild(cls: type[APIMWError], message: str) -> APIMWError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.message = message
    return error


class ConfigurationError(APIMWError, ValueError):
    """An argument, environment variable or URL the SDK cannot work with."""


class ValidationError(APIMWError, ValueError):
    """A request argument breaks a rule the API documents (E.164 ``to``, 4096-character
    message, HTTPS webhook URL, ...). Raised before anything is sent; ``field`` names the
    argument. ``Client(..., validate=False)`` turns these checks off.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ClientClosedError(APIMWError, RuntimeError):
    """The client or token manager was used after ``aclose()``."""


class MalformedResponseError(APIMWError):
    """The server's answer is not the documented envelope or shape."""


class APIConnectionError(APIMWError):
    """The request did not complete: DNS failure, connection refused or reset, ...

    ``sent`` tells whether the request may have reached the server: ``False`` only when it
    certainly did not (the connection could not be established), so it is safe to repeat.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class APITimeoutError(APIConnectionError):
    """The request took longer than its timeout (it may have reached the server)."""


class PoolTimeoutError(APITimeoutError):
    """The request waited longer than ``admission_timeout`` for a free connection slot.

    It was never sent (``sent`` is ``False``) and is not retried: the timeout bounds the whole
    wait. httpx calls this a pool timeout.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class APIStatusError(APIMWError):
    """The server answered with an error status (and usually the error envelope).

    ``headers`` holds the response headers (the request id, rate-limit headers, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.headers: Mapping[str, str] = dict(headers or {})

    @property
    def request_id(self) -> str | None:
        """The server's request id header, if it sent one."""
        for name, value in self.headers.items():
            if name.lower() in ("x-request-id", "request-id", "x-correlation-id"):
                return value
        return None


class BadRequestError(APIStatusError):
    """400 / 422: the request was refused as invalid."""


class InvalidPhoneNumberError(BadRequestError):
    """400 ``INVALID_PHONE_NUMBER``: the recipient is not a valid E.164 number."""


class AuthenticationError(APIStatusError):
    """401: authentication failed."""


class InvalidCredentialsError(AuthenticationError):
    """``INVALID_CREDENTIALS``: the API key or secret is wrong. Permanent; never retried."""


class InvalidRefreshTokenError(AuthenticationError):
    """``INVALID_REFRESH_TOKEN``: the refresh token is spent, expired or unknown."""


class AccessTokenError(AuthenticationError):
    """A bearer access token was refused (401 on an authenticated call)."""


class ExpiredTokenError(AccessTokenError):
    """``EXPIRED_TOKEN``: the access token is past its lifetime."""


class InvalidTokenError(AccessTokenError):
    """``INVALID_TOKEN``: the access token is malformed or unknown."""


class RevokedTokenError(AccessTokenError):
    """``REVOKED_TOKEN``: the access token was revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the token lacks a permission."""


class NotFoundError(APIStatusError):
    """404: no such resource."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's state."""


class RateLimitError(APIStatusError):
    """429 ``RATE_LIMIT_EXCEEDED``. ``retry_after`` is the advised wait in seconds, if known."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, headers=headers)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server failed."""


class TokenUnavailableError(APIMWError):
    """No valid access token could be obtained within the deadline.

    ``__cause__`` is the last underlying error; ``status``, ``code`` and ``retry_after`` are
    copied from it where it had them.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        status = getattr(cause, "status", None)
        code = getattr(cause, "code", None)
        super().__init__(message, status=status, code=code)
        self.retry_after: float | None = getattr(cause, "retry_after", None)
        self.__cause__ = cause


class StoreUnavailableError(APIMWError):
    """A shared token store cannot be reached; the token manager degrades to local work."""


_BY_CODE: dict[str, type[APIStatusError]] = {
    "INVALID_CREDENTIALS": InvalidCredentialsError,
    "INVALID_REFRESH_TOKEN": InvalidRefreshTokenError,
    "EXPIRED_TOKEN": ExpiredTokenError,
    "INVALID_TOKEN": InvalidTokenError,
    "REVOKED_TOKEN": RevokedTokenError,
    "INVALID_PHONE_NUMBER": InvalidPhoneNumberError,
    "RATE_LIMIT_EXCEEDED": RateLimitError,
}

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_from_status(
    status: int,
    code: str | None,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
    bearer: bool = False,
) -> APIStatusError:
    """Build the most specific error for an error response.

    The APIMW code wins over the status (the docs do not give statuses for every code); a 401
    to a bearer-authenticated call without a known code is an :class:`AccessTokenError`.
    """
    cls = _BY_CODE.get(code or "")
    if cls is None:
        if bearer and is_token_refusal(status, code):
            cls = AccessTokenError
        elif status >= 500:
            cls = ServerError
        else:
            cls = _BY_STATUS.get(status, APIStatusError)
    if issubclass(cls, RateLimitError):
        return cls(message, status=status, code=code, headers=headers, retry_after=retry_after)
    return cls(message, status=status, code=code, headers=headers)


def is_token_refusal(status: int, code: str | None) -> bool:
    """Whether an answer to a bearer-authenticated call means "this access token was refused".

    A 401 with ``EXPIRED_TOKEN``, ``INVALID_TOKEN`` or ``REVOKED_TOKEN``, and a 401 with no
    code or a code that means nothing else (a gateway's bare 401): the server did not act, and
    a fresh token may succeed. The one rule for the client's replay and the middleware's
    (both see it as an :class:`AccessTokenError` from :func:`error_from_status`).
    """
    if status != 401:
        return False
    cls = _BY_CODE.get(code or "")
    return cls is None or issubclass(cls, AccessTokenError)
