"""apimw_async: an asyncio-first SDK for the APIMW WhatsApp API middleware.

The public names are re-exported here; every module with a leading underscore is private.
"""

from ._client import Client
from ._clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from ._errors import (
    AccessTokenError,
    APIConnectionError,
    APIMWError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    ExpiredTokenError,
    InvalidCredentialsError,
    InvalidPhoneNumberError,
    InvalidRefreshTokenError,
    InvalidTokenError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RevokedTokenError,
    ServerError,
    TokenUnavailableError,
)
from ._http import ApiResponse, RateLimitInfo
from ._middleware import BearerAuthMiddleware
from ._models import Credentials, CurrentUser, Tenant, Token, User, fingerprint
from ._retry import RetryPolicy
from ._token_manager import RefreshPolicy, TokenHook, TokenManager, TokenStats
from ._version import __version__

__all__ = [
    "SYSTEM_CLOCK",
    "APIConnectionError",
    "APIMWError",
    "APIStatusError",
    "APITimeoutError",
    "AccessTokenError",
    "ApiResponse",
    "AuthenticationError",
    "BadRequestError",
    "BearerAuthMiddleware",
    "Client",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "Credentials",
    "CurrentUser",
    "ExpiredTokenError",
    "FakeClock",
    "InvalidCredentialsError",
    "InvalidPhoneNumberError",
    "InvalidRefreshTokenError",
    "InvalidTokenError",
    "MalformedResponseError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimitInfo",
    "RefreshPolicy",
    "RetryPolicy",
    "RevokedTokenError",
    "ServerError",
    "SystemClock",
    "Tenant",
    "Token",
    "TokenHook",
    "TokenManager",
    "TokenStats",
    "TokenUnavailableError",
    "User",
    "__version__",
    "fingerprint",
]
