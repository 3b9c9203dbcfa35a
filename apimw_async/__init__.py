"""apimw_async: an asyncio-first SDK for the APIMW WhatsApp API middleware.

The public names are re-exported here; every module with a leading underscore is private.

Logging follows the convention for libraries: records go to the ``apimw_async`` logger (and its
children), which has a :class:`logging.NullHandler`, so nothing is printed unless the
application configures logging (e.g. ``logging.basicConfig(level=logging.INFO)``).
"""

import logging as _logging

from ._client import Client
from ._clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from ._config import LOGGER_NAME as _LOGGER_NAME
from ._envelope import ApiResponse, RateLimitInfo
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
    StoreUnavailableError,
    TokenUnavailableError,
    ValidationError,
)
from ._middleware import BearerAuthMiddleware
from ._models import Credentials, CurrentUser, Tenant, Token, User, fingerprint
from ._retry import RateLimiter, RetryPolicy, Throttle
from ._token_manager import RefreshPolicy, TokenHook, TokenManager, TokenStats
from ._types import (
    MessageInfo,
    MessageStatus,
    Pagination,
    SentMessage,
    Template,
    TemplateBody,
    TemplateComponent,
    TemplateComponentInput,
    TemplateCurrency,
    TemplateHeaderImage,
    TemplatePage,
    TemplateStatus,
    TemplateText,
    TemplateUrlButton,
    Webhook,
)
from ._version import __version__
from .resources import AuthResource, WebhooksResource, WhatsAppResource

__all__ = [
    "SYSTEM_CLOCK",
    "APIConnectionError",
    "APIMWError",
    "APIStatusError",
    "APITimeoutError",
    "AccessTokenError",
    "ApiResponse",
    "AuthResource",
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
    "MessageInfo",
    "MessageStatus",
    "NotFoundError",
    "Pagination",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimitInfo",
    "RateLimiter",
    "RefreshPolicy",
    "RetryPolicy",
    "RevokedTokenError",
    "SentMessage",
    "ServerError",
    "StoreUnavailableError",
    "SystemClock",
    "Template",
    "TemplateBody",
    "TemplateComponent",
    "TemplateComponentInput",
    "TemplateCurrency",
    "TemplateHeaderImage",
    "TemplatePage",
    "TemplateStatus",
    "TemplateText",
    "TemplateUrlButton",
    "Tenant",
    "Throttle",
    "Token",
    "TokenHook",
    "TokenManager",
    "TokenStats",
    "TokenUnavailableError",
    "User",
    "ValidationError",
    "Webhook",
    "WebhooksResource",
    "WhatsAppResource",
    "__version__",
    "fingerprint",
]

# A library never decides where its records go: without this, logging's "last resort" handler
# would print warnings and errors to stderr of every application that configured nothing.
_logging.getLogger(_LOGGER_NAME).addHandler(_logging.NullHandler())
