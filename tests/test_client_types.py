"""Result parsers, template-component builders and the client-side checks, without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apimw_async import (
    APIMWError,
    MalformedResponseError,
    MessageInfo,
    MessageStatus,
    Pagination,
    SentMessage,
    Template,
    TemplateBody,
    TemplateCurrency,
    TemplateHeaderImage,
    TemplatePage,
    TemplateStatus,
    TemplateText,
    TemplateUrlButton,
    ValidationError,
    Webhook,
)
from apimw_async._types import components_payload, parse_timestamp
from apimw_async.resources._checks import (
    check_events,
    check_phone,
    check_text,
    check_webhook_url,
)

UTC = timezone.utc

# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00Z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00+00:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T12:30:00+02:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),  # no offset: UTC
        ("2024-01-15T10:30:00.5Z", datetime(2024, 1, 15, 10, 30, 0, 500000, tzinfo=UTC)),
        ("2024-01-15T10:30:00.123456789Z", datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_timestamps_are_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text, "t")
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["yesterday", "", "2024-13-45T99:99:99Z", 1705314600, [], {}])
def test_unreadable_timestamps_are_malformed(value: Any) -> None:
    with pytest.raises(MalformedResponseError):
        parse_timestamp(value, "t")


# --- results ---------------------------------------------------------------------------------


def test_sent_message_from_the_documented_example() -> None:
    sent = SentMessage.from_data(
        {
            "message_id": "wamid.HBgLMTIzNDU2Nzg5MBUCABIYFjNFQjBDMUFGNEI0",
            "to": "+1234567890",
            "status": "sent",
            "timestamp": "2024-01-15T10:30:00Z",
        }
    )
    assert sent.status is MessageStatus.SENT
    assert sent.status == "sent"
    assert sent.timestamp == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert sent.template is None


def test_a_sent_message_is_read_leniently_but_needs_its_id() -> None:
    # The message was accepted: anything but the id may be missing or odd.
    sent = SentMessage.from_data(
        {"message_id": "wamid.X", "status": "queued", "timestamp": "soon", "to": 5},
        to="+1234567890",
        template="order_confirmation",
    )
    assert sent.to == "+1234567890"
    assert sent.status is MessageStatus.UNKNOWN
    assert sent.raw_status == "queued"
    assert sent.timestamp is None
    assert sent.template == "order_confirmation"
    for data in ({}, {"message_id": ""}, {"message_id": 7}, None, []):
        with pytest.raises(MalformedResponseError, match="may have been sent"):
            SentMessage.from_data(data)


def test_message_info_from_the_documented_example() -> None:
    info = MessageInfo.from_data(
        {
            "message_id": "wamid.X",
            "to": "+1234567890",
            "type": "text",
            "status": "delivered",
            "timestamps": {
                "sent": "2024-01-15T10:30:00Z",
                "delivered": "2024-01-15T10:30:05Z",
                "read": None,
            },
        }
    )
    assert info.status is MessageStatus.DELIVERED
    assert info.sent_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert info.delivered_at == datetime(2024, 1, 15, 10, 30, 5, tzinfo=UTC)
    assert info.read_at is None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("sent", MessageStatus.SENT),
        ("DELIVERED", MessageStatus.DELIVERED),
        ("read", MessageStatus.READ),
        ("failed", MessageStatus.FAILED),
        ("deleted", MessageStatus.UNKNOWN),
        ("", MessageStatus.UNKNOWN),
    ],
)
def test_unknown_statuses_keep_the_raw_string(raw: str, status: MessageStatus) -> None:
    info = MessageInfo.from_data({"message_id": "m", "status": raw})
    assert info.status is status
    assert info.raw_status == raw
    assert (info.sent_at, info.delivered_at, info.read_at) == (None, None, None)


def test_template_page_from_the_documented_example() -> None:
    page = TemplatePage.from_data(
        {
            "templates": [
                {
                    "name": "order_confirmation",
                    "language": "en",
                    "status": "APPROVED",
                    "category": "TRANSACTIONAL",
                    "components": [
                        {"type": "HEADER", "format": "TEXT", "text": "Order Confirmed"},
                        {"type": "BODY", "text": "Hi {{1}}, your order {{2}} is confirmed."},
                        {"type": "FOOTER", "text": "Thanks"},
                    ],
                }
            ],
            "pagination": {"total": 15, "page": 1, "per_page": 20},
        }
    )
    [template] = page.templates
    assert template.status is TemplateStatus.APPROVED
    assert template.body == "Hi {{1}}, your order {{2}} is confirmed."
    assert [c.type for c in template.components] == ["HEADER", "BODY", "FOOTER"]
    assert template.components[0].format == "TEXT"
    assert page.pagination == Pagination(total=15, page=1, per_page=20)


def test_pagination_tolerates_unusable_numbers() -> None:
    assert Pagination.from_data(None) is None
    assert Pagination.from_data({"total": -3, "page": "2", "per_page": True}) == Pagination(
        None, None, None
    )
    with pytest.raises(MalformedResponseError):
        Pagination.from_data([1, 2])


def test_webhook_keeps_its_secret_out_of_repr() -> None:
    hook = Webhook.from_data(
        {
            "id": "whk_abc123",
            "url": "https://example.com/hook",
            "events": ["message.delivered"],
            "active": True,
            "created_at": "2024-01-15T10:30:00Z",
        },
        secret="whsec_your_secret_key",
    )
    assert hook.secret == "whsec_your_secret_key"
    assert "whsec" not in repr(hook)
    assert "whsec" not in str(hook)
    assert hook.events == ("message.delivered",)
    assert hook.created_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    with pytest.raises(MalformedResponseError, match="may have been registered"):
        Webhook.from_data({"url": "https://example.com/hook"})


# --- every parser raises only the package's errors on any JSON -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def shaped(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that mostly have the right keys, with arbitrary values."""
    return st.fixed_dictionaries({}, optional={k: json_values for k in keys})


PARSERS = [
    (SentMessage.from_data, ["message_id", "to", "status", "timestamp", "template"]),
    (MessageInfo.from_data, ["message_id", "to", "type", "status", "timestamps"]),
    (TemplatePage.from_data, ["templates", "pagination"]),
    (Template.from_data, ["name", "language", "status", "category", "components"]),
    (Pagination.from_data, ["total", "page", "per_page"]),
    (Webhook.from_data, ["id", "url", "events", "active", "created_at"]),
]


@pytest.mark.parametrize(("parse", "keys"), PARSERS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parsers_raise_only_typed_errors(parse: Any, keys: list[str], data: st.DataObject) -> None:
    value = data.draw(
        json_values | shaped(keys) | st.fixed_dictionaries({k: json_values for k in keys})
    )
    try:
        result = parse(value)
    except MalformedResponseError:
        return
    repr(result)


@settings(max_examples=300, deadline=None)
@given(
    stamps=st.dictionaries(
        st.sampled_from(["sent", "delivered", "read"]),
        st.none() | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()) | st.text(),
    )
)
def test_message_info_timestamps_are_aware_or_none(stamps: dict[str, Any]) -> None:
    try:
        info = MessageInfo.from_data({"message_id": "m", "status": "sent", "timestamps": stamps})
    except MalformedResponseError:
        return
    for value in (info.sent_at, info.delivered_at, info.read_at):
        assert value is None or value.tzinfo is not None


# --- template component builders -------------------------------------------------------------


def test_builders_produce_the_documented_shapes() -> None:
    payload = components_payload(
        [
            TemplateHeaderImage("https://example.com/receipt.png"),
            TemplateBody("Ann", TemplateText("A-1001"), TemplateCurrency("USD", 99990)),
            TemplateUrlButton(0, "A-1001"),
            {"type": "button", "sub_type": "quick_reply", "index": 1, "parameters": []},
        ]
    )
    assert payload == [
        {
            "type": "header",
            "parameters": [{"type": "image", "image": {"link": "https://example.com/receipt.png"}}],
        },
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Ann"},
                {"type": "text", "text": "A-1001"},
                {"type": "currency", "currency": {"code": "USD", "amount_1000": 99990}},
            ],
        },
        {
            "type": "button",
            "sub_type": "url",
            "index": 0,
            "parameters": [{"type": "text", "text": "A-1001"}],
        },
        {"type": "button", "sub_type": "quick_reply", "index": 1, "parameters": []},
    ]


@pytest.mark.parametrize(
    ("amount", "amount_1000"),
    [(Decimal("99.99"), 99990), ("0.0005", 0), ("0.0015", 2), (12, 12000), ("-1.5", -1500)],
)
def test_currency_of_a_decimal_amount(amount: Any, amount_1000: int) -> None:
    assert TemplateCurrency.of("USD", amount).amount_1000 == amount_1000


def test_currency_fallback_value_is_sent_only_when_set() -> None:
    currency = TemplateCurrency("EUR", 1000, fallback_value="€1.00").to_dict()
    assert currency["currency"] == {"code": "EUR", "amount_1000": 1000, "fallback_value": "€1.00"}


@pytest.mark.parametrize(
    "build",
    [
        lambda: TemplateCurrency("USD", 1.5),
        lambda: TemplateCurrency("USD", True),
        lambda: TemplateCurrency("", 1),
        lambda: TemplateCurrency.of("USD", "lots"),
        lambda: TemplateCurrency.of("USD", "Infinity"),
        lambda: TemplateCurrency.of("USD", 1.5),
        lambda: TemplateUrlButton(-1, "x"),
        lambda: TemplateUrlButton(True, "x"),
        lambda: TemplateUrlButton(0, ""),
        lambda: TemplateHeaderImage(""),
        lambda: TemplateText(""),
        lambda: TemplateBody("ok", 3),
        lambda: components_payload("body"),
        lambda: components_payload({"type": "body"}),
        lambda: components_payload([3]),
    ],
)
def test_builders_refuse_bad_values(build: Any) -> None:
    with pytest.raises(ValidationError):
        build()


# --- the client-side checks ------------------------------------------------------------------


@pytest.mark.parametrize("number", ["+1234567890", "+447911123456", "+6834002", "+123456789012345"])
def test_e164_numbers_pass(number: str) -> None:
    check_phone(number)


@pytest.mark.parametrize(
    "number",
    [
        "1234567890",
        "+0123456789",
        "+1 234 567 890",
        "+1-234-567-890",
        "+123456",
        "+1234567890123456",
        "+１２３４５６７８９０",  # full-width digits
        "+1234567890\n",
        "",
        None,
        1234567890,
    ],
)
def test_non_e164_numbers_are_refused(number: Any) -> None:
    with pytest.raises(ValidationError, match=r"E\.164") as caught:
        check_phone(number)
    assert caught.value.field == "to"
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, APIMWError)
    # A phone number is personal data: the message does not depend on (or echo) it.
    with pytest.raises(ValidationError) as other:
        check_phone("+44 7911")
    assert str(caught.value) == str(other.value)


def test_message_length_counts_characters() -> None:
    check_text("x" * 4096)
    check_text("😀" * 4096)  # 4096 characters, 8192 UTF-16 units
    with pytest.raises(ValidationError, match="4097 characters"):
        check_text("x" * 4097)
    with pytest.raises(ValidationError, match="non-empty"):
        check_text("")


@pytest.mark.parametrize(
    ("url", "loopback_ok", "accepted"),
    [
        ("https://example.com/hook", False, True),
        ("https://127.0.0.1:8443/hook", False, True),
        ("http://example.com/hook", False, False),
        ("http://example.com/hook", True, False),
        ("http://127.0.0.1:8080/hook", False, False),
        ("http://127.0.0.1:8080/hook", True, True),
        ("http://localhost/hook", True, True),
        ("http://[::1]/hook", True, True),
        ("ftp://example.com/hook", True, False),
        ("/hook", True, False),
        ("https://user:pw@example.com/hook", False, False),
        ("", False, False),
    ],
)
def test_webhook_urls(url: str, loopback_ok: bool, accepted: bool) -> None:
    if accepted:
        check_webhook_url(url, allow_loopback_http=loopback_ok)
    else:
        with pytest.raises(ValidationError) as caught:
            check_webhook_url(url, allow_loopback_http=loopback_ok)
        assert caught.value.field == "url"


@pytest.mark.parametrize("events", [[], "message.sent", ["message.sent", ""], [3], None])
def test_events_must_be_a_non_empty_list_of_names(events: Any) -> None:
    with pytest.raises(ValidationError):
        check_events(events)
