"""Value types and errors: credentials, tokens, results, the error mapping, the public surface."""

from __future__ import annotations
import __future__

import hashlib
import inspect
from typing import Any

import pytest

import apimw_async
import apimw_async.testing
from apimw_async import (
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
    Credentials,
    CurrentUser,
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
    Tenant,
    Token,
    TokenUnavailableError,
    User,
    fingerprint,
)
from apimw_async._auth_api import TokenGrant
from apimw_async._errors import error_from_status

API_KEY = "ak_live_abc123xyz"
API_SECRET = "sk_live_secret456_DO_NOT_LOG"
ACCESS = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c3JfMSJ9.c2lnbmF0dXJlX3NlY3JldA"
REFRESH = "rt_abc123xyz456_refresh_secret"


def make_token(
    *,
    access_token: str = ACCESS,
    token_type: str = "Bearer",
    refresh_token: str | None = REFRESH,
    obtained_at: float = 1000.0,
    refresh_at: float = 3880.0,
    expires_at: float = 4595.0,
) -> Token:
    return Token(
        access_token=access_token,
        token_type=token_type,
        expires_in=3600.0,
        refresh_token=refresh_token,
        obtained_at=obtained_at,
        refresh_at=refresh_at,
        expires_at=expires_at,
        issued_at=1_767_225_600.0,
    )


# --- Credentials -----------------------------------------------------------------------------


def test_credentials_keep_key_and_secret() -> None:
    creds = Credentials(API_KEY, API_SECRET)
    assert creds.api_key == API_KEY
    assert creds.api_secret == API_SECRET
    assert creds == Credentials(API_KEY, API_SECRET)
    assert hash(creds) == hash(Credentials(API_KEY, API_SECRET))


@pytest.mark.parametrize(
    ("api_key", "api_secret", "bad_field"),
    [
        ("", API_SECRET, "api_key"),
        ("   ", API_SECRET, "api_key"),
        ("\t\n", API_SECRET, "api_key"),
        (None, API_SECRET, "api_key"),
        (12345, API_SECRET, "api_key"),
        (b"ak_live_bytes", API_SECRET, "api_key"),
        (API_KEY, "", "api_secret"),
        (API_KEY, "  ", "api_secret"),
        (API_KEY, None, "api_secret"),
        (API_KEY, 42, "api_secret"),
    ],
)
def test_credentials_validation(api_key: Any, api_secret: Any, bad_field: str) -> None:
    with pytest.raises(ConfigurationError, match=bad_field) as info:
        Credentials(api_key, api_secret)
    assert isinstance(info.value, ValueError)  # ConfigurationError is also a ValueError
    assert API_SECRET not in str(info.value)


def test_credentials_are_frozen() -> None:
    creds = Credentials(API_KEY, API_SECRET)
    with pytest.raises(AttributeError):
        creds.api_secret = "other"  # type: ignore[misc]


def test_from_env_reads_both_variables() -> None:
    env = {"APIMW_API_KEY": API_KEY, "APIMW_API_SECRET": API_SECRET, "UNRELATED": "x"}
    assert Credentials.from_env(env) == Credentials(API_KEY, API_SECRET)


def test_from_env_strips_whitespace() -> None:
    env = {"APIMW_API_KEY": f"  {API_KEY}\n", "APIMW_API_SECRET": f"\t{API_SECRET} \r\n"}
    creds = Credentials.from_env(env)
    assert creds.api_key == API_KEY
    assert creds.api_secret == API_SECRET


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "APIMW_API_KEY"),
        ({"APIMW_API_SECRET": API_SECRET}, "APIMW_API_KEY"),
        ({"APIMW_API_KEY": API_KEY}, "APIMW_API_SECRET"),
        ({"APIMW_API_KEY": "", "APIMW_API_SECRET": API_SECRET}, "APIMW_API_KEY"),
        ({"APIMW_API_KEY": "   ", "APIMW_API_SECRET": API_SECRET}, "APIMW_API_KEY"),
        ({"APIMW_API_KEY": API_KEY, "APIMW_API_SECRET": ""}, "APIMW_API_SECRET"),
        ({"APIMW_API_KEY": API_KEY, "APIMW_API_SECRET": " \n\t "}, "APIMW_API_SECRET"),
        # lower-case names are different variables
        ({"apimw_api_key": API_KEY, "apimw_api_secret": API_SECRET}, "APIMW_API_KEY"),
    ],
)
def test_from_env_missing_or_empty_names_the_variable(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigurationError, match=missing) as info:
        Credentials.from_env(env)
    assert API_SECRET not in str(info.value)
    assert API_KEY not in str(info.value)


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMW_API_KEY", API_KEY)
    monkeypatch.setenv("APIMW_API_SECRET", API_SECRET)
    assert Credentials.from_env() == Credentials(API_KEY, API_SECRET)
    monkeypatch.delenv("APIMW_API_SECRET")
    with pytest.raises(ConfigurationError, match="APIMW_API_SECRET"):
        Credentials.from_env()


@pytest.mark.parametrize("render", [repr, str, format])
def test_credentials_repr_hides_the_secret(render: Any) -> None:
    creds = Credentials(API_KEY, API_SECRET)
    text = render(creds)
    assert API_SECRET not in text
    assert "sk_live" not in text
    assert API_KEY not in text  # the key is masked to its first 8 characters
    assert "ak_live_" in text
    assert "***" in text


def test_credentials_repr_hides_a_short_key_entirely() -> None:
    creds = Credentials("ak_short", "s3cr3t!")
    text = repr(creds)
    assert "ak_short" not in text
    assert "s3cr3t!" not in text


def test_credentials_repr_inside_containers() -> None:
    # Containers and f-strings use repr of their items.
    creds = Credentials(API_KEY, API_SECRET)
    assert API_SECRET not in repr([creds])
    assert API_SECRET not in f"{creds!r} {creds}"


def test_credentials_key_fingerprint() -> None:
    creds = Credentials(API_KEY, API_SECRET)
    assert creds.key_fingerprint == fingerprint(API_KEY)
    assert creds.key_fingerprint != fingerprint(API_SECRET)


# --- Token -----------------------------------------------------------------------------------


@pytest.mark.parametrize("render", [repr, str, format])
def test_token_repr_hides_access_and_refresh_tokens(render: Any) -> None:
    token = make_token()
    text = render(token)
    assert ACCESS not in text
    assert REFRESH not in text
    # not even the recognisable parts of the JWT
    for part in ACCESS.split("."):
        assert part not in text
    assert "rt_" not in text
    assert token.fingerprint in text


def test_token_repr_without_refresh_token() -> None:
    text = repr(make_token(refresh_token=None))
    assert "refresh_token=None" in text
    assert ACCESS not in text


@pytest.mark.parametrize("render", [repr, str])
def test_token_grant_repr_hides_tokens(render: Any) -> None:
    grant = TokenGrant(
        access_token=ACCESS,
        token_type="Bearer",
        expires_in=3600.0,
        refresh_token=REFRESH,
        sent_at=1.0,
        sent_at_wall=2.0,
    )
    text = render(grant)
    assert ACCESS not in text
    assert REFRESH not in text
    assert "3600" in text


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_authorization_normalises_bearer(token_type: str) -> None:
    assert make_token(token_type=token_type).authorization == f"Bearer {ACCESS}"


def test_authorization_keeps_other_schemes_verbatim() -> None:
    assert make_token(token_type="MAC").authorization == f"MAC {ACCESS}"


def test_needs_refresh_is_expired_and_remaining_boundaries() -> None:
    token = make_token(obtained_at=1000.0, refresh_at=3880.0, expires_at=4595.0)
    # fresh
    assert not token.needs_refresh(1000.0)
    assert not token.needs_refresh(3879.999)
    assert not token.is_expired(3879.999)
    # the window opens exactly at refresh_at
    assert token.needs_refresh(3880.0)
    assert not token.is_expired(3880.0)
    # expired exactly at expires_at
    assert not token.is_expired(4594.999)
    assert token.is_expired(4595.0)
    assert token.needs_refresh(4595.0)
    assert token.is_expired(10_000.0)
    # remaining life counts down and goes negative
    assert token.remaining(1000.0) == 3595.0
    assert token.remaining(4595.0) == 0.0
    assert token.remaining(4600.0) == -5.0


def test_token_fingerprint_is_that_of_the_access_token() -> None:
    token = make_token()
    assert token.fingerprint == fingerprint(ACCESS)
    assert token.fingerprint != fingerprint(REFRESH)


def test_token_is_frozen() -> None:
    token = make_token()
    with pytest.raises(AttributeError):
        token.access_token = "other"  # type: ignore[misc]


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_is_sha256_prefix() -> None:
    assert fingerprint(ACCESS) == hashlib.sha256(ACCESS.encode()).hexdigest()[:8]
    assert len(fingerprint("x")) == 8
    assert all(c in "0123456789abcdef" for c in fingerprint("x"))


def test_fingerprint_is_deterministic_and_distinguishes() -> None:
    assert fingerprint("token-a") == fingerprint("token-a")
    assert fingerprint("token-a") != fingerprint("token-b")


@pytest.mark.parametrize("empty", [None, ""])
def test_fingerprint_of_nothing(empty: str | None) -> None:
    assert fingerprint(empty) == "-"


def test_fingerprint_survives_lone_surrogates_and_non_ascii() -> None:
    assert len(fingerprint("\ud800bad")) == 8
    assert len(fingerprint("tökén ✓")) == 8
    assert fingerprint("tökén") == hashlib.sha256("tökén".encode()).hexdigest()[:8]


# --- CurrentUser -----------------------------------------------------------------------------

ME_DATA: dict[str, Any] = {
    "user": {"id": "usr_abc123", "email": "dev@example.com", "name": "Dev One"},
    "tenant": {"id": "ten_xyz789", "name": "Acme", "plan": "professional", "status": "active"},
    "permissions": ["whatsapp:send", "whatsapp:templates", "webhooks:manage"],
}


def test_current_user_from_documented_data() -> None:
    me = CurrentUser.from_data(ME_DATA)
    assert me.user == User(id="usr_abc123", email="dev@example.com", name="Dev One")
    assert me.tenant == Tenant(id="ten_xyz789", name="Acme", plan="professional", status="active")
    assert me.permissions == ("whatsapp:send", "whatsapp:templates", "webhooks:manage")
    assert me.has_permission("whatsapp:send")
    assert not me.has_permission("admin")


def test_current_user_ignores_unknown_fields() -> None:
    data = {
        **ME_DATA,
        "extra": {"nested": [1, 2]},
        "user": {**ME_DATA["user"], "avatar": "https://x"},
    }
    assert CurrentUser.from_data(data).user.id == "usr_abc123"


def test_current_user_optional_fields_missing() -> None:
    me = CurrentUser.from_data({"user": {"id": "usr_1"}, "tenant": {"id": "ten_1"}})
    assert me.user == User(id="usr_1")
    assert me.user.email is None
    assert me.user.name is None
    assert me.tenant == Tenant(id="ten_1")
    assert me.tenant.plan is None
    assert me.tenant.status is None
    assert me.permissions == ()


def test_current_user_optional_fields_null() -> None:
    data = {
        "user": {"id": "usr_1", "email": None, "name": None},
        "tenant": {"id": "ten_1", "name": None, "plan": None, "status": None},
        "permissions": None,
    }
    me = CurrentUser.from_data(data)
    assert me.user.email is None
    assert me.tenant.plan is None
    assert me.permissions == ()


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ME_DATA.items()}
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ME_DATA.items()}
    target = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="data-null"),
        pytest.param([], id="data-list"),
        pytest.param("usr_1", id="data-string"),
        pytest.param(_without(("user",)), id="user-missing"),
        pytest.param(_without(("tenant",)), id="tenant-missing"),
        pytest.param(_with(("user",), "usr_1"), id="user-string"),
        pytest.param(_with(("user",), None), id="user-null"),
        pytest.param(_with(("tenant",), ["ten_1"]), id="tenant-list"),
        pytest.param(_without(("user", "id")), id="user-id-missing"),
        pytest.param(_with(("user", "id"), 123), id="user-id-int"),
        pytest.param(_with(("user", "id"), True), id="user-id-bool"),
        pytest.param(_with(("user", "id"), None), id="user-id-null"),
        pytest.param(_without(("tenant", "id")), id="tenant-id-missing"),
        pytest.param(_with(("tenant", "id"), {"id": "ten_1"}), id="tenant-id-object"),
        pytest.param(_with(("user", "email"), 5), id="email-int"),
        pytest.param(_with(("user", "name"), ["Dev"]), id="name-list"),
        pytest.param(_with(("tenant", "plan"), False), id="plan-bool"),
        pytest.param(_with(("tenant", "status"), {}), id="status-object"),
        pytest.param(_with(("permissions",), "whatsapp:send"), id="permissions-string"),
        pytest.param(_with(("permissions",), {"whatsapp:send": True}), id="permissions-object"),
        pytest.param(_with(("permissions",), ["whatsapp:send", 7]), id="permissions-int-item"),
        pytest.param(_with(("permissions",), [None]), id="permissions-null-item"),
    ],
)
def test_current_user_wrong_shapes_are_malformed(data: Any) -> None:
    with pytest.raises(MalformedResponseError):
        CurrentUser.from_data(data)


def test_current_user_fast_path_agrees_with_the_checked_one() -> None:
    # from_data checks the documented shape inline and falls back to the field-by-field
    # checks for anything else: both must build the same result.
    import types

    variants = [
        ME_DATA,
        {"user": {"id": "usr_1"}, "tenant": {"id": "ten_1"}},
        {"user": {"id": "u", "email": None}, "tenant": {"id": "t"}, "permissions": []},
        types.MappingProxyType({**ME_DATA, "user": types.MappingProxyType(ME_DATA["user"])}),
    ]
    for data in variants:
        assert CurrentUser.from_data(data) == CurrentUser._checked(data)


# --- error_from_status -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        # the documented codes, at their documented statuses
        (401, "INVALID_CREDENTIALS", InvalidCredentialsError),
        (401, "INVALID_REFRESH_TOKEN", InvalidRefreshTokenError),
        (401, "EXPIRED_TOKEN", ExpiredTokenError),
        (401, "INVALID_TOKEN", InvalidTokenError),
        (401, "REVOKED_TOKEN", RevokedTokenError),
        (400, "INVALID_PHONE_NUMBER", InvalidPhoneNumberError),
        (429, "RATE_LIMIT_EXCEEDED", RateLimitError),
        # the code wins over the status
        (400, "INVALID_CREDENTIALS", InvalidCredentialsError),
        (403, "EXPIRED_TOKEN", ExpiredTokenError),
        (500, "RATE_LIMIT_EXCEEDED", RateLimitError),
        (401, "INVALID_PHONE_NUMBER", InvalidPhoneNumberError),
        (503, "REVOKED_TOKEN", RevokedTokenError),
        # unknown or no code: the status decides
        (400, None, BadRequestError),
        (422, "VALIDATION_ERROR", BadRequestError),
        (401, None, AuthenticationError),
        (401, "SOMETHING_NEW", AuthenticationError),
        (403, "FORBIDDEN", PermissionDeniedError),
        (404, None, NotFoundError),
        (409, "CONFLICT", ConflictError),
        (429, None, RateLimitError),
        (500, None, ServerError),
        (501, "NOT_IMPLEMENTED", ServerError),
        (502, None, ServerError),
        (503, None, ServerError),
        (504, None, ServerError),
        (599, None, ServerError),
        (418, None, APIStatusError),
        (405, None, APIStatusError),
        (302, None, APIStatusError),
    ],
)
def test_error_from_status_mapping(status: int, code: str | None, expected: type) -> None:
    err = error_from_status(status, code, "boom")
    assert type(err) is expected
    assert err.status == status
    assert err.code == code
    assert str(err) == "boom"
    assert err.message == "boom"


@pytest.mark.parametrize("code", [None, "", "SOMETHING_NEW", "UNAUTHORIZED"])
def test_bearer_401_without_known_code_is_access_token_error(code: str | None) -> None:
    err = error_from_status(401, code, "refused", bearer=True)
    assert type(err) is AccessTokenError
    # ... but not on a non-bearer call (the token endpoints)
    assert type(error_from_status(401, code, "refused", bearer=False)) is AuthenticationError


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("INVALID_CREDENTIALS", InvalidCredentialsError),
        ("INVALID_REFRESH_TOKEN", InvalidRefreshTokenError),
        ("EXPIRED_TOKEN", ExpiredTokenError),
    ],
)
def test_bearer_401_known_code_still_wins(code: str, expected: type) -> None:
    assert type(error_from_status(401, code, "m", bearer=True)) is expected


def test_bearer_flag_only_matters_for_401() -> None:
    assert type(error_from_status(403, None, "m", bearer=True)) is PermissionDeniedError
    assert type(error_from_status(500, None, "m", bearer=True)) is ServerError
    assert type(error_from_status(400, None, "m", bearer=True)) is BadRequestError


def test_rate_limit_error_carries_retry_after_and_headers() -> None:
    err = error_from_status(
        429, "RATE_LIMIT_EXCEEDED", "slow down", headers={"X-Request-Id": "req_1"}, retry_after=60
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 60
    assert err.headers == {"X-Request-Id": "req_1"}
    assert err.request_id == "req_1"
    no_code = error_from_status(429, None, "slow down", retry_after=1.5)
    assert isinstance(no_code, RateLimitError)
    assert no_code.retry_after == 1.5
    assert error_from_status(429, None, "m").retry_after is None  # type: ignore[attr-defined]


def test_retry_after_is_dropped_for_other_errors() -> None:
    err = error_from_status(503, None, "down", retry_after=30)
    assert isinstance(err, ServerError)
    assert not hasattr(err, "retry_after")


def test_rate_limit_error_defaults() -> None:
    err = RateLimitError("m")
    assert err.status == 429
    assert err.code is None
    assert err.retry_after is None
    assert err.headers == {}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Request-Id": "req_1"}, "req_1"),
        ({"x-request-id": "req_2"}, "req_2"),
        ({"X-REQUEST-ID": "req_3"}, "req_3"),
        ({"Request-Id": "req_4"}, "req_4"),
        ({"X-Correlation-Id": "req_5"}, "req_5"),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_request_id_property(headers: dict[str, str] | None, expected: str | None) -> None:
    err = APIStatusError("m", status=500, headers=headers)
    assert err.request_id == expected


def test_status_error_headers_are_a_copy() -> None:
    headers = {"X-Request-Id": "req_1"}
    err = APIStatusError("m", status=400, headers=headers)
    headers["X-Request-Id"] = "changed"
    assert err.request_id == "req_1"


def test_base_error_attributes() -> None:
    err = APIMWError("plain")
    assert err.status is None
    assert err.code is None
    assert str(err) == "plain"
    err2 = APIMWError("with", status=401, code="X")
    assert (err2.status, err2.code) == (401, "X")
    # the class defaults are not changed by an instance
    assert APIMWError.status is None
    assert APIMWError.code is None


def test_connection_errors_sent_flag() -> None:
    assert APIConnectionError("m").sent is True
    assert APIConnectionError("m", sent=False).sent is False
    assert APITimeoutError("m").sent is True
    assert APITimeoutError("m", sent=False).sent is False
    assert issubclass(APITimeoutError, APIConnectionError)


def test_token_unavailable_copies_from_its_cause() -> None:
    cause = RateLimitError("busy", code="RATE_LIMIT_EXCEEDED", retry_after=12.0)
    err = TokenUnavailableError("no token", cause=cause)
    assert err.__cause__ is cause
    assert err.status == 429
    assert err.code == "RATE_LIMIT_EXCEEDED"
    assert err.retry_after == 12.0
    bare = TokenUnavailableError("no token")
    assert bare.__cause__ is None
    assert (bare.status, bare.code, bare.retry_after) == (None, None, None)
    conn = TokenUnavailableError("no token", cause=APIConnectionError("down"))
    assert (conn.status, conn.code, conn.retry_after) == (None, None, None)


def test_documented_hierarchy() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ClientClosedError, RuntimeError)
    assert issubclass(InvalidPhoneNumberError, BadRequestError)
    for cls in (InvalidCredentialsError, InvalidRefreshTokenError, AccessTokenError):
        assert issubclass(cls, AuthenticationError)
    for cls in (ExpiredTokenError, InvalidTokenError, RevokedTokenError):
        assert issubclass(cls, AccessTokenError)
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        RateLimitError,
        ServerError,
    ):
        assert issubclass(cls, APIStatusError)
    # the token endpoints' refusals are not "access token" refusals (those get replayed)
    assert not issubclass(InvalidCredentialsError, AccessTokenError)
    assert not issubclass(InvalidRefreshTokenError, AccessTokenError)


def _exception_classes() -> list[type[BaseException]]:
    from apimw_async import _errors

    names = set(apimw_async.__all__) | set(_errors.__all__)
    found = []
    for module in (apimw_async, _errors):
        for name in names:
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                found.append(obj)
    return sorted(set(found), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__name__)
def test_every_exception_is_an_apimw_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, APIMWError)


def test_every_exception_class_is_exported() -> None:
    from apimw_async import _errors

    defined = {
        name
        for name, obj in vars(_errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == _errors.__name__
    }
    assert defined <= set(apimw_async.__all__)
    assert len(_exception_classes()) == len(defined)


# --- the public surface ----------------------------------------------------------------------


def _public_names(module: Any) -> set[str]:
    # Modules and ``from __future__ import annotations`` (a _Feature object) are not API.
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(obj)
        and not isinstance(obj, __future__._Feature)
    }


def test_all_names_are_importable() -> None:
    for name in apimw_async.__all__:
        assert hasattr(apimw_async, name), name
    namespace: dict[str, Any] = {}
    exec("from apimw_async import *", namespace)  # noqa: S102
    assert set(apimw_async.__all__) <= set(namespace)


def test_public_surface_equals_all() -> None:
    # Like httpx's test_all_imports_are_exported: nothing public is left out of __all__.
    assert len(apimw_async.__all__) == len(set(apimw_async.__all__))
    assert _public_names(apimw_async) == set(apimw_async.__all__) - {"__version__"}


def test_version_is_exported() -> None:
    assert "__version__" in apimw_async.__all__
    assert isinstance(apimw_async.__version__, str)
    assert apimw_async.__version__


def test_public_classes_are_defined_in_the_package() -> None:
    for name in apimw_async.__all__:
        obj = getattr(apimw_async, name)
        module = getattr(obj, "__module__", None)
        if hasattr(obj, "__origin__"):
            continue  # a type alias such as TokenHook (Python 3.10 reports it as a class)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert module is not None
            assert module.startswith("apimw_async."), (name, module)


def test_testing_surface_equals_all() -> None:
    testing = apimw_async.testing
    assert len(testing.__all__) == len(set(testing.__all__))
    for name in testing.__all__:
        assert hasattr(testing, name), name
    assert _public_names(testing) == set(testing.__all__)


def test_one_rule_for_a_refused_token() -> None:
    from apimw_async._errors import is_token_refusal

    for code in ("EXPIRED_TOKEN", "INVALID_TOKEN", "REVOKED_TOKEN", None, "", "SOMETHING_NEW"):
        assert is_token_refusal(401, code)
    for code in ("INVALID_CREDENTIALS", "INVALID_REFRESH_TOKEN", "RATE_LIMIT_EXCEEDED"):
        assert not is_token_refusal(401, code)
    assert not is_token_refusal(403, "INVALID_TOKEN")
