"""Webhook receiving: signatures, event parsing and the framework-agnostic receiver.

Signatures are checked against HMAC values computed here with :mod:`hmac` directly (plus the
RFC 4231 vector), never against ``sign()`` alone. Background handlers are observed through
``asyncio.Event`` objects, never through sleeps or timings.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from apimw_async import APIMWError, ConfigurationError
from apimw_async.webhooks import (
    MESSAGE_EVENT_TYPES,
    SIGNATURE_HEADER,
    MemoryWebhookDedup,
    MessageEvent,
    UnknownEvent,
    VerificationChallenge,
    WebhookEvent,
    WebhookPayloadError,
    WebhookReceiver,
    WebhookReply,
    parse_event,
    parse_event_data,
    sign,
    verify_signature,
)

SECRET = "whsec_test_secret_1234567890"
OTHER_SECRET = "whsec_some_other_secret_0987"
LOGGER = "apimw_async.webhooks"

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def hex_hmac(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def body_of(value: Any) -> bytes:
    return json.dumps(value).encode()


def signed(body: bytes, secret: str | bytes = SECRET) -> dict[str, str]:
    key = secret.encode() if isinstance(secret, str) else secret
    return {SIGNATURE_HEADER: "sha256=" + hex_hmac(key, body)}


# --- signatures ------------------------------------------------------------------------------

BODY = b'{"id":"evt_1","type":"message.sent","data":{"message_id":"wamid.1"}}'
GOOD_HEX = hex_hmac(SECRET.encode(), BODY)


def test_rfc4231_vector() -> None:
    # RFC 4231 test case 2 (key "Jefe").
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign("Jefe", b"what do ya want for nothing?") == "sha256=" + expected
    assert verify_signature("Jefe", b"what do ya want for nothing?", "sha256=" + expected)


def test_sign_matches_an_independent_hmac() -> None:
    assert sign(SECRET, BODY) == "sha256=" + GOOD_HEX
    assert verify_signature(SECRET, BODY, "sha256=" + GOOD_HEX)


@pytest.mark.parametrize(
    "header",
    [
        "sha256=" + GOOD_HEX.upper(),
        "SHA256=" + GOOD_HEX,
        "Sha256=" + GOOD_HEX.upper(),
        "  sha256=" + GOOD_HEX + "  ",
        "\tsha256=" + GOOD_HEX + "\r\n",
    ],
    ids=["upper-hex", "upper-prefix", "mixed", "spaces", "tabs-crlf"],
)
def test_accepted_header_forms(header: str) -> None:
    assert verify_signature(SECRET, BODY, header) is True


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        GOOD_HEX,  # missing prefix
        "sha256:" + GOOD_HEX,
        "sha1=" + GOOD_HEX,
        "sha256 =" + GOOD_HEX,
        "sha256=",
        "sha256=" + GOOD_HEX[:-1],  # too short
        "sha256=" + GOOD_HEX + "0",  # too long
        "sha256=" + GOOD_HEX[:-2],
        "sha256=" + GOOD_HEX + GOOD_HEX,
        "sha256=" + "g" * 64,  # not hex
        "sha256=" + GOOD_HEX[:-1] + "é",  # non-ASCII, right length
        "sha256=é" + GOOD_HEX[1:],
        "sha256=" + GOOD_HEX[:-1] + "٣",  # Arabic-Indic digit
        "sha256=" + GOOD_HEX[:30] + " " + GOOD_HEX[31:],  # inner space, right length
        "sha256=" + GOOD_HEX[:-1] + "\x00",
        "sha256=" + "0" * 64,
        "sha256=" + hex_hmac(OTHER_SECRET.encode(), BODY),
        "sha256=" + GOOD_HEX + ",sha256=" + GOOD_HEX,
        "sha512=" + hashlib.sha512(BODY).hexdigest(),
    ],
)
def test_rejected_headers_return_false(header: str | None) -> None:
    assert verify_signature(SECRET, BODY, header) is False


def test_non_str_header_is_false_not_an_error() -> None:
    header: Any = ("sha256=" + GOOD_HEX).encode()
    assert verify_signature(SECRET, BODY, header) is False
    assert verify_signature(SECRET, BODY, 12345) is False  # type: ignore[arg-type]


def test_tampered_body_fails() -> None:
    assert verify_signature(SECRET, BODY + b" ", "sha256=" + GOOD_HEX) is False
    reserialised = json.dumps(json.loads(BODY)).encode()
    assert reserialised != BODY
    assert verify_signature(SECRET, reserialised, "sha256=" + GOOD_HEX) is False


def test_bytes_and_str_secrets_agree() -> None:
    assert sign(SECRET, BODY) == sign(SECRET.encode(), BODY)
    assert verify_signature(SECRET.encode(), BODY, "sha256=" + GOOD_HEX)
    assert verify_signature(bytearray(SECRET.encode()), BODY, "sha256=" + GOOD_HEX)  # type: ignore[arg-type]


def test_non_ascii_str_secret_is_utf8() -> None:
    secret = "clé-secrète-🔑"
    expected = "sha256=" + hex_hmac(secret.encode("utf-8"), BODY)
    assert sign(secret, BODY) == expected
    assert verify_signature(secret, BODY, expected)


def test_binary_secret() -> None:
    secret = bytes(range(256))
    expected = "sha256=" + hex_hmac(secret, BODY)
    assert sign(secret, BODY) == expected
    assert verify_signature(secret, BODY, expected)


def test_body_types() -> None:
    header = "sha256=" + GOOD_HEX
    assert verify_signature(SECRET, bytearray(BODY), header)  # type: ignore[arg-type]
    assert verify_signature(SECRET, memoryview(BODY), header)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        verify_signature(SECRET, BODY.decode(), header)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sign(SECRET, 5)  # type: ignore[arg-type]


def test_empty_body_can_be_signed() -> None:
    assert verify_signature(SECRET, b"", "sha256=" + hex_hmac(SECRET.encode(), b""))


@pytest.mark.parametrize("secret", ["", b"", None, 42])
def test_bad_secret_is_a_configuration_error(secret: Any) -> None:
    with pytest.raises(ConfigurationError):
        verify_signature(secret, BODY, "sha256=" + GOOD_HEX)
    with pytest.raises(ConfigurationError):
        sign(secret, BODY)


@PROPERTY
@given(header=st.one_of(st.none(), st.text(), st.text().map(lambda t: "sha256=" + t)))
def test_verify_signature_never_raises_on_any_header(header: str | None) -> None:
    assert verify_signature(SECRET, BODY, header) is False


@PROPERTY
@given(
    body=st.binary(max_size=512),
    upper=st.booleans(),
    pad=st.sampled_from(["", " ", "\t", "\n "]),
)
def test_sign_verify_round_trip(body: bytes, upper: bool, pad: str) -> None:
    digest = hex_hmac(SECRET.encode(), body)
    header = pad + "sha256=" + (digest.upper() if upper else digest) + pad
    assert verify_signature(SECRET, body, header)
    assert sign(SECRET, body) == "sha256=" + digest
    assert not verify_signature(OTHER_SECRET, body, header)


# --- event parsing ---------------------------------------------------------------------------

UTC = timezone.utc
JAN15 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize("event_type", ["message.sent", "message.delivered", "message.read"])
def test_status_events(event_type: str) -> None:
    payload = {
        "id": "evt_1",
        "type": event_type,
        "timestamp": "2024-01-15T10:30:00Z",
        "data": {"message_id": "wamid.ABC", "to": "+14155550123", "from": "+14155550999"},
    }
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageEvent)
    assert event.type == event_type
    assert event.id == "evt_1"
    assert event.timestamp == JAN15
    assert event.message_id == "wamid.ABC"
    assert event.to == "+14155550123"
    assert event.from_ == "+14155550999"
    assert event.status == event_type.split(".")[1]  # from the name when data has none
    assert event.text is None
    assert not event.is_inbound
    assert event.raw == payload
    assert event.data == payload["data"]


def test_failed_event_with_error_details() -> None:
    payload = {
        "event_id": "evt_9",
        "event": "message.failed",
        "created_at": "2024-01-15T10:30:00.5+02:00",
        "data": {
            "message_id": "wamid.F",
            "status": "failed",
            "error": {"code": "131026", "message": "Receiver is incapable"},
        },
    }
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageEvent)
    assert (event.type, event.id, event.status) == ("message.failed", "evt_9", "failed")
    assert event.error == "Receiver is incapable"
    assert event.timestamp == datetime(
        2024, 1, 15, 10, 30, 0, 500000, tzinfo=timezone(timedelta(hours=2))
    )
    assert event.timestamp is not None
    assert event.timestamp.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("error", "expected"),
    [("plain text", "plain text"), ({"code": "X1"}, "X1"), ({"code": 470}, "470"), (5, None)],
)
def test_failed_event_error_shapes(error: Any, expected: str | None) -> None:
    event = parse_event(body_of({"type": "message.failed", "data": {"error": error}}))
    assert isinstance(event, MessageEvent)
    assert event.error == expected


def test_explicit_status_wins_over_the_event_name() -> None:
    event = parse_event(body_of({"type": "message.read", "data": {"status": "READ"}}))
    assert isinstance(event, MessageEvent)
    assert event.status == "READ"


def test_received_message_flat_envelope() -> None:
    # No "data": the remaining top-level fields are the payload.
    payload = {
        "id": "evt_2",
        "type": "message.received",
        "timestamp": "2024-01-15T10:30:00Z",
        "message_id": "wamid.IN",
        "from": "+14155550123",
        "text": "hello",
    }
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageEvent)
    assert event.is_inbound
    assert (event.from_, event.text, event.message_id) == ("+14155550123", "hello", "wamid.IN")
    assert event.status is None
    assert event.id == "evt_2"
    assert event.data == {"message_id": "wamid.IN", "from": "+14155550123", "text": "hello"}
    assert event.raw == payload


@pytest.mark.parametrize(
    "data",
    [
        {"from": "+1", "text": {"body": "hi"}},
        {"from": "+1", "body": "hi"},
        {"from": "+1", "message": "hi"},
        {"from": "+1", "message": {"text": "hi"}},
        {"from": "+1", "message": {"text": {"body": "hi"}}},
        {"message": {"id": "wamid.N", "from": "+1", "text": {"body": "hi"}}},
        {"from_number": "+1", "content": "hi"},
        {"sender": "+1", "text": "hi"},
    ],
)
def test_received_message_body_shapes(data: dict[str, Any]) -> None:
    event = parse_event(body_of({"type": "message.received", "data": data}))
    assert isinstance(event, MessageEvent)
    assert (event.from_, event.text) == ("+1", "hi")


def test_nested_message_id() -> None:
    event = parse_event(body_of({"type": "message.received", "data": {"message": {"id": "w.1"}}}))
    assert isinstance(event, MessageEvent)
    assert event.message_id == "w.1"


def test_integer_ids_and_numbers_become_strings() -> None:
    event = parse_event(body_of({"id": 17, "type": "message.sent", "data": {"to": 14155550123}}))
    assert isinstance(event, MessageEvent)
    assert (event.id, event.to) == ("17", "14155550123")


def test_message_event_with_no_fields() -> None:
    event = parse_event(b'{"type": "message.delivered"}')
    assert isinstance(event, MessageEvent)
    assert (event.id, event.timestamp, event.message_id, event.from_, event.to) == (None,) * 5
    assert (event.text, event.error, event.status) == (None, None, "delivered")
    assert event.data == {}


def test_wrong_field_types_are_absent_not_errors() -> None:
    payload = {
        "id": ["x"],
        "type": "message.received",
        "timestamp": {"t": 1},
        "data": {"from": {"phone": "+1"}, "text": ["a"], "message_id": None, "to": True},
    }
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageEvent)
    assert event.id is None
    assert event.timestamp is None
    assert (event.from_, event.text, event.message_id, event.to) == (None, None, None, None)


def test_empty_id_counts_as_absent() -> None:
    assert parse_event(b'{"type": "x", "id": ""}').id is None
    assert parse_event(b'{"type": "x", "event_id": "", "id": "e"}').id == "e"


def test_event_id_preferred_over_id() -> None:
    assert parse_event(b'{"type": "x", "event_id": "evt", "id": "other"}').id == "evt"


def test_known_type_wins_when_type_and_event_differ() -> None:
    event = parse_event(b'{"type": "text", "event": "message.received", "text": "yo"}')
    assert isinstance(event, MessageEvent)
    assert event.type == "message.received"
    assert parse_event(b'{"type": "a.b", "event": "c.d"}').type == "a.b"


def test_non_object_data_keeps_the_top_level_payload() -> None:
    event = parse_event(b'{"type": "x.y", "data": [1, 2], "extra": true}')
    assert event.data == {"data": [1, 2], "extra": True}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-15T10:30:00Z", JAN15),
        ("2024-01-15T10:30:00z", JAN15),
        ("2024-01-15T10:30:00.000Z", JAN15),
        ("2024-01-15T10:30:00.1234567Z", JAN15.replace(microsecond=123456)),
        ("2024-01-15T10:30:00.1Z", JAN15.replace(microsecond=100000)),
        ("2024-01-15T10:30:00+00:00", JAN15),
        ("2024-01-15T11:30:00+01:00", JAN15),
        ("2024-01-15T10:30:00", JAN15),  # naive: documented as UTC
        (" 2024-01-15T10:30:00Z ", JAN15),
        (1705314600, JAN15),
        (1705314600.0, JAN15),
        ("yesterday", None),
        ("", None),
        ("２０２４-01-15T10:30:00Z", None),
        (True, None),
        (None, None),
        (10**20, None),
        (float("nan"), None),
        ([2024], None),
    ],
)
def test_timestamps(value: Any, expected: datetime | None) -> None:
    event = parse_event_data({"type": "x", "timestamp": value})
    assert event.timestamp == expected
    if event.timestamp is not None:
        assert event.timestamp.tzinfo is not None


def test_timestamp_falls_back_to_created_at_and_to_data() -> None:
    both = {"type": "x", "timestamp": "junk", "created_at": "2024-01-15T10:30:00Z"}
    assert parse_event_data(both).timestamp == JAN15
    nested = {"type": "x", "data": {"timestamp": "2024-01-15T10:30:00Z"}}
    assert parse_event_data(nested).timestamp == JAN15


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "webhook.verification", "challenge": "ch_123"},
        {"type": "webhook.verification", "data": {"challenge": "ch_123"}},
        {"event": "webhook.verification", "challenge": "ch_123", "id": "evt_v"},
    ],
)
def test_verification_challenge(payload: dict[str, Any]) -> None:
    event = parse_event(body_of(payload))
    assert isinstance(event, VerificationChallenge)
    assert event.challenge == "ch_123"
    assert event.type == "webhook.verification"
    assert event.raw == payload


def test_numeric_challenge_is_kept_as_text() -> None:
    event = parse_event(b'{"type": "webhook.verification", "challenge": 12345}')
    assert isinstance(event, VerificationChallenge)
    assert event.challenge == "12345"


@pytest.mark.parametrize("challenge", [None, ["x"], {"a": 1}, True])
def test_verification_without_a_challenge_is_a_payload_error(challenge: Any) -> None:
    payload: dict[str, Any] = {"type": "webhook.verification"}
    if challenge is not None:
        payload["challenge"] = challenge
    with pytest.raises(WebhookPayloadError, match="challenge"):
        parse_event(body_of(payload))


def test_unknown_type_is_kept() -> None:
    payload = {"id": "evt_3", "type": "template.approved", "data": {"name": "hello_world"}}
    event = parse_event(body_of(payload))
    assert type(event) is UnknownEvent
    assert isinstance(event, WebhookEvent)
    assert (event.type, event.id, event.data, event.raw) == (
        "template.approved",
        "evt_3",
        {"name": "hello_world"},
        payload,
    )


@pytest.mark.parametrize("payload", [{}, {"type": 5}, {"type": ""}, {"hello": "world"}])
def test_missing_type_is_an_unknown_event(payload: dict[str, Any]) -> None:
    event = parse_event(body_of(payload))
    assert type(event) is UnknownEvent
    assert event.type == ""


def test_every_documented_message_type_is_a_message_event() -> None:
    for name in MESSAGE_EVENT_TYPES:
        assert isinstance(parse_event(body_of({"type": name})), MessageEvent)
    assert type(parse_event(b'{"type": "message.deleted"}')) is UnknownEvent


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b"not json",
        b"\xff\xfe\x00garbage",
        b'{"type": "message.sent",}',
        b"[]",
        b"[1, 2]",
        b"42",
        b"null",
        b'"message.sent"',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
        b'{"n": 1' + b"0" * 10_000 + b"}",  # beyond Python's int-digit limit
    ],
    ids=lambda b: repr(b[:20]),
)
def test_bad_bodies_raise_webhook_payload_error(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError) as info:
        parse_event(body)
    assert isinstance(info.value, APIMWError)
    assert "garbage" not in str(info.value)


def test_parse_event_data_rejects_non_objects() -> None:
    with pytest.raises(WebhookPayloadError):
        parse_event_data([{"type": "message.sent"}])


def test_utf16_and_bytearray_bodies() -> None:
    assert parse_event(json.dumps({"type": "a.b"}).encode("utf-16")).type == "a.b"
    assert parse_event(bytearray(b'{"type": "a.b"}')).type == "a.b"  # type: ignore[arg-type]


def test_events_are_frozen_comparable_and_hashable() -> None:
    body = body_of({"id": "e", "type": "message.read", "data": {"message_id": "w"}})
    first, second = parse_event(body), parse_event(body)
    assert first == second
    assert hash(first) == hash(second)
    with pytest.raises(AttributeError):
        first.id = "other"  # type: ignore[misc]
    assert "raw" not in repr(first)
    assert "message_id='w'" in repr(first)


def test_events_can_be_built_by_hand() -> None:
    event = MessageEvent(type="message.received", from_="+1", text="hi")
    assert event.is_inbound
    assert event.raw == {}
    assert event.data == {}


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.sampled_from(
        ["message.sent", "message.received", "webhook.verification", "2024-01-15T10:30:00Z"]
    ),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
ENVELOPE_KEYS = st.sampled_from(
    [
        "id",
        "event_id",
        "type",
        "event",
        "timestamp",
        "created_at",
        "data",
        "challenge",
        "message",
        "text",
        "from",
        "to",
        "status",
        "error",
        "message_id",
    ]
)
ENVELOPES = st.dictionaries(st.one_of(ENVELOPE_KEYS, st.text(max_size=6)), JSON_VALUES)


def check_parse(body: bytes) -> None:
    try:
        event = parse_event(body)
    except WebhookPayloadError:
        return
    assert isinstance(event, (MessageEvent, VerificationChallenge, UnknownEvent))
    assert isinstance(event.type, str)
    assert event.id is None or isinstance(event.id, str)
    assert event.timestamp is None or event.timestamp.tzinfo is not None
    repr(event)


@PROPERTY
@given(body=st.binary(max_size=256))
def test_parse_event_on_arbitrary_bytes(body: bytes) -> None:
    check_parse(body)


@PROPERTY
@given(value=st.one_of(JSON_VALUES, ENVELOPES, st.fixed_dictionaries({"data": ENVELOPES})))
def test_parse_event_on_arbitrary_json(value: Any) -> None:
    check_parse(json.dumps(value).encode())


@PROPERTY
@given(
    event_type=st.sampled_from(
        [*sorted(MESSAGE_EVENT_TYPES), "webhook.verification", "other.thing"]
    ),
    envelope=ENVELOPES,
    data=ENVELOPES,
)
def test_parse_event_on_typed_envelopes(
    event_type: str, envelope: dict[str, Any], data: dict[str, Any]
) -> None:
    check_parse(json.dumps({**envelope, "type": event_type, "data": data}).encode())


# --- the receiver ----------------------------------------------------------------------------


class Recorder:
    """A handler that records events; ``gate`` (if set) holds every call until it opens."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.events: list[WebhookEvent] = []
        self.started = asyncio.Event()
        self.finished: list[WebhookEvent] = []
        self.cancelled: list[WebhookEvent] = []
        self.gate = gate

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(event)
            raise
        self.finished.append(event)


def event_body(event_id: str | None = "evt_1", event_type: str = "message.delivered") -> bytes:
    payload: dict[str, Any] = {"type": event_type, "data": {"message_id": "wamid.X"}}
    if event_id is not None:
        payload["id"] = event_id
    return body_of(payload)


async def nothing(event: WebhookEvent) -> None:
    pass


CHALLENGE = body_of({"type": "webhook.verification", "challenge": "ch_abc"})


async def deliver(
    receiver: WebhookReceiver, body: bytes, secret: str | bytes | None = SECRET
) -> WebhookReply:
    return await receiver.receive(body, signed(body, secret) if secret is not None else {})


async def test_signed_event_is_acknowledged_and_handled() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    reply = await deliver(receiver, event_body())
    assert reply == WebhookReply(200, b"", "text/plain; charset=utf-8")
    await receiver.drain()
    assert len(handler.events) == 1
    event = handler.events[0]
    assert isinstance(event, MessageEvent)
    assert (event.id, event.message_id, event.status) == ("evt_1", "wamid.X", "delivered")
    assert receiver.stats.as_dict() == {
        "received": 1,
        "delivered": 1,
        "duplicates": 0,
        "challenges": 0,
        "rejected": 0,
        "handler_errors": 0,
        "handlers_cancelled": 0,
        "queued": 0,
        "queue_errors": 0,
        "overloaded": 0,
        "handoff_failures": 0,
        "in_flight_duplicates": 0,
        "dedup_errors": 0,
    }
    await receiver.aclose()


@pytest.mark.parametrize(
    "headers",
    [
        {"x-apimw-signature": "{sig}"},
        {"X-APIMW-SIGNATURE": "{sig}"},
        {"x-Apimw-Signature": "{sig}"},
        CIMultiDict({"x-apimw-signature": "{sig}"}),
    ],
    ids=["lower", "upper", "mixed", "cimultidict"],
)
async def test_header_name_is_case_insensitive(headers: Any) -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    body = event_body()
    sig = sign(SECRET, body)
    filled = type(headers)({k: v.format(sig=sig) for k, v in headers.items()})
    assert (await receiver.receive(body, filled)).status == 200
    await receiver.drain()
    assert len(handler.events) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: "   "},
        {SIGNATURE_HEADER: "garbage"},
        {SIGNATURE_HEADER: "sha256=" + "0" * 64},
        {SIGNATURE_HEADER: "sha256=é" + "0" * 63},
        {"X-Other": "sha256=whatever"},
    ],
    ids=["none", "empty", "blank", "garbage", "zeros", "non-ascii", "other-header"],
)
async def test_unsigned_or_forged_events_get_401(headers: dict[str, str]) -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    reply = await receiver.receive(event_body(), headers)
    assert reply.status == 401
    assert receiver.stats.rejected == 1
    assert receiver.stats.delivered == 0
    await receiver.drain()
    assert handler.events == []


async def test_signed_with_the_wrong_secret_or_tampered_gets_401() -> None:
    receiver = WebhookReceiver(SECRET, Recorder())
    body = event_body()
    assert (await deliver(receiver, body, OTHER_SECRET)).status == 401
    tampered = body.replace(b"wamid.X", b"wamid.Y")
    assert (await receiver.receive(tampered, signed(body))).status == 401
    assert receiver.stats.rejected == 2


async def test_secret_rotation_accepts_any_configured_secret() -> None:
    handler = Recorder()
    receiver = WebhookReceiver([SECRET, OTHER_SECRET.encode()], handler)
    assert (await deliver(receiver, event_body("a"), SECRET)).status == 200
    assert (await deliver(receiver, event_body("b"), OTHER_SECRET)).status == 200
    assert (await deliver(receiver, event_body("c"), "whsec_retired")).status == 401
    await receiver.drain()
    assert [e.id for e in handler.events] == ["a", "b"]


async def test_single_bytes_secret() -> None:
    receiver = WebhookReceiver(SECRET.encode(), Recorder())
    assert (await deliver(receiver, event_body(), SECRET)).status == 200
    await receiver.aclose()


async def test_require_signature_false_accepts_unsigned_but_not_forged() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, require_signature=False)
    assert (await receiver.receive(event_body("a"), {})).status == 200
    assert (await deliver(receiver, event_body("b"), OTHER_SECRET)).status == 401
    assert (await deliver(receiver, event_body("c"))).status == 200
    await receiver.drain()
    assert [e.id for e in handler.events] == ["a", "c"]


async def test_no_secret_skips_verification(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    handler = Recorder()
    receiver = WebhookReceiver(None, handler)
    assert "NOT verified" in caplog.text
    assert (await receiver.receive(event_body("a"), {})).status == 200
    forged = {SIGNATURE_HEADER: "sha256=" + "0" * 64}
    assert (await receiver.receive(event_body("b"), forged)).status == 200
    await receiver.drain()
    assert [e.id for e in handler.events] == ["a", "b"]


@pytest.mark.parametrize("mode", ["text", "json"])
@pytest.mark.parametrize("signature", ["none", "valid", "blank"])
async def test_challenge_is_answered(mode: Any, signature: str) -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, challenge_response=mode)
    headers = {
        "none": {},
        "valid": signed(CHALLENGE),
        "blank": {SIGNATURE_HEADER: ""},
    }[signature]
    reply = await receiver.receive(CHALLENGE, headers)
    assert reply.status == 200
    if mode == "text":
        assert reply.body == b"ch_abc"
        assert reply.content_type == "text/plain; charset=utf-8"
    else:
        assert json.loads(reply.body) == {"challenge": "ch_abc"}
        assert reply.content_type == "application/json"
    assert receiver.stats.challenges == 1
    await receiver.drain()
    assert handler.events == []  # the handshake is not an event for the handler


async def test_challenge_with_a_wrong_signature_gets_401() -> None:
    receiver = WebhookReceiver(SECRET, Recorder())
    reply = await deliver(receiver, CHALLENGE, OTHER_SECRET)
    assert reply.status == 401
    assert b"ch_abc" not in reply.body
    assert receiver.stats.challenges == 0


async def test_challenge_without_secret_and_odd_challenge_text() -> None:
    receiver = WebhookReceiver(None, Recorder(), challenge_response="text")
    body = b'{"type": "webhook.verification", "challenge": "caf\\u00e9 \\ud800"}'
    reply = await receiver.receive(body, {})
    assert reply.status == 200
    assert reply.body == "café \ud800".encode("utf-8", "surrogatepass")


async def test_signed_challenge_without_value_is_400() -> None:
    receiver = WebhookReceiver(SECRET, Recorder())
    body = b'{"type": "webhook.verification"}'
    assert (await deliver(receiver, body)).status == 400
    assert (await receiver.receive(body, {})).status == 401


@pytest.mark.parametrize("body", [b"not json", b"[1]", b""])
async def test_bad_json_status_depends_on_authentication(body: bytes) -> None:
    signed_receiver = WebhookReceiver(SECRET, Recorder())
    assert (await deliver(signed_receiver, body)).status == 400
    assert (await signed_receiver.receive(body, {})).status == 401
    assert (await deliver(signed_receiver, body, OTHER_SECRET)).status == 401
    open_receiver = WebhookReceiver(None, Recorder())
    assert (await open_receiver.receive(body, {})).status == 400
    assert signed_receiver.stats.rejected == 3
    assert open_receiver.stats.rejected == 1


async def test_acknowledged_before_a_slow_handler_finishes() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler)
    reply = await deliver(receiver, event_body())
    # The handler has not even started: the reply does not wait for it.
    assert reply.status == 200
    assert handler.events == []
    assert receiver.pending == 1
    await handler.started.wait()
    assert handler.finished == []
    assert receiver.pending == 1
    gate.set()
    await receiver.drain()
    assert len(handler.finished) == 1
    assert receiver.pending == 0
    await receiver.aclose()


async def test_many_deliveries_run_concurrently() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler)
    for i in range(50):
        assert (await deliver(receiver, event_body(f"evt_{i}"))).status == 200
    assert receiver.pending == 50
    gate.set()
    await receiver.drain()
    assert sorted(e.id or "" for e in handler.finished) == sorted(f"evt_{i}" for i in range(50))


async def test_duplicates_are_acknowledged_but_not_handled_again() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    body = event_body("evt_dup")
    for _ in range(3):
        assert (await deliver(receiver, body)).status == 200
    # Same id under another event type is a different event.
    assert (await deliver(receiver, event_body("evt_dup", "message.read"))).status == 200
    await receiver.drain()
    assert [(e.type, e.id) for e in handler.events] == [
        ("message.delivered", "evt_dup"),
        ("message.read", "evt_dup"),
    ]
    assert receiver.stats.duplicates == 2
    assert receiver.stats.delivered == 2


async def test_duplicate_of_a_still_running_event_is_suppressed() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body("evt_1"))
    await handler.started.wait()
    assert (await deliver(receiver, event_body("evt_1"))).status == 200
    gate.set()
    await receiver.drain()
    assert len(handler.events) == 1


async def test_events_without_id_are_always_delivered() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    body = event_body(None)
    for _ in range(3):
        assert (await deliver(receiver, body)).status == 200
    await receiver.drain()
    assert len(handler.events) == 3
    assert receiver.stats.duplicates == 0


async def test_dedup_memory_is_bounded_lru() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, dedup_size=2)

    async def send(event_id: str) -> None:
        assert (await deliver(receiver, event_body(event_id))).status == 200

    await send("a")
    await send("b")
    await send("a")  # duplicate; refreshes "a"
    await send("c")  # evicts "b", the least recently seen
    await send("a")  # still remembered
    await send("b")  # forgotten: delivered again (evicts "c")
    await send("c")  # forgotten too
    await receiver.drain()
    assert [e.id for e in handler.events] == ["a", "b", "c", "b", "c"]
    assert receiver.stats.duplicates == 2


async def test_dedup_memory_never_exceeds_its_size() -> None:
    receiver = WebhookReceiver(SECRET, Recorder(), dedup_size=100)
    for i in range(1000):
        await deliver(receiver, event_body(f"evt_{i}"))
    assert isinstance(receiver._dedup, MemoryWebhookDedup)
    assert len(receiver._dedup._seen) == 100
    assert ("message.delivered", "evt_999") in receiver._dedup._seen
    assert ("message.delivered", "evt_899") not in receiver._dedup._seen
    await receiver.aclose()


async def test_dedup_can_be_disabled() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, dedup_size=0)
    for _ in range(2):
        await deliver(receiver, event_body("same"))
    await receiver.drain()
    assert len(handler.events) == 2


async def test_handler_errors_are_logged_reported_and_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    reported: list[tuple[WebhookEvent, Exception]] = []
    ok_events: list[WebhookEvent] = []

    async def handler(event: WebhookEvent) -> None:
        if event.id == "boom":
            raise RuntimeError("handler exploded")
        ok_events.append(event)

    receiver = WebhookReceiver(SECRET, handler, on_error=lambda e, x: reported.append((e, x)))
    assert (await deliver(receiver, event_body("boom"))).status == 200
    assert (await deliver(receiver, event_body("fine"))).status == 200
    await receiver.drain()
    assert [e.id for e in ok_events] == ["fine"]
    assert receiver.stats.handler_errors == 1
    assert len(reported) == 1
    assert reported[0][0].id == "boom"
    assert isinstance(reported[0][1], RuntimeError)
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "boom" in errors[0].getMessage()


async def test_async_on_error_and_failing_on_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    seen = asyncio.Event()

    async def handler(event: WebhookEvent) -> None:
        raise ValueError("bad event")

    async def on_error(event: WebhookEvent, exc: Exception) -> None:
        seen.set()
        raise RuntimeError("the error hook fails too")

    receiver = WebhookReceiver(SECRET, handler, on_error=on_error)
    await deliver(receiver, event_body())
    await receiver.drain()
    assert seen.is_set()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("handler failed" in m for m in messages)
    assert any("on_error hook failed" in m for m in messages)


async def test_failed_handler_tasks_never_report_unretrieved_exceptions() -> None:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    try:

        async def handler(event: WebhookEvent) -> None:
            raise RuntimeError("nobody awaits me")

        receiver = WebhookReceiver(SECRET, handler)
        for i in range(5):
            await deliver(receiver, event_body(f"e{i}"))
        await receiver.drain()
        await receiver.aclose()
        del receiver
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert contexts == []


async def test_sync_handler_is_tolerated() -> None:
    seen: list[WebhookEvent] = []
    handler: Any = seen.append
    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body())
    await receiver.drain()
    assert len(seen) == 1


async def test_aclose_cancels_pending_handlers_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    handler = Recorder(asyncio.Event())  # never opens
    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body("a"))
    await deliver(receiver, event_body("b"))
    await handler.started.wait()
    await receiver.aclose(timeout=0)
    assert receiver.pending == 0
    assert receiver.closed
    assert receiver.stats.handlers_cancelled == 2
    assert {e.id for e in handler.cancelled} <= {"a", "b"}
    assert handler.finished == []
    assert "cancelled 2 webhook handler(s)" in caplog.text
    # Closed: refuse with 503 so APIMW delivers again later.
    reply = await deliver(receiver, event_body("c"))
    assert reply.status == 503
    assert receiver.stats.delivered == 2
    assert receiver.stats.rejected == 1
    await receiver.aclose()  # idempotent


async def test_aclose_waits_for_running_handlers() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body())
    await handler.started.wait()
    closing = asyncio.ensure_future(receiver.aclose(timeout=None))
    await asyncio.sleep(0)  # one yield (not a timed wait): the new task's first step runs
    assert receiver.closed
    assert not closing.done()
    assert (await deliver(receiver, event_body("late"))).status == 503
    gate.set()
    await closing
    assert len(handler.finished) == 1
    assert handler.cancelled == []
    assert receiver.stats.handlers_cancelled == 0


async def test_aclose_with_a_grace_period_lets_handlers_finish() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body())
    gate.set()  # the handler can finish as soon as it runs
    await receiver.aclose(timeout=60)
    assert len(handler.finished) == 1
    assert receiver.stats.handlers_cancelled == 0


async def test_cancelling_aclose_still_cancels_the_handlers() -> None:
    handler = Recorder(asyncio.Event())
    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body())
    await handler.started.wait()
    closing = asyncio.ensure_future(receiver.aclose(timeout=None))
    await asyncio.sleep(0)  # one yield: aclose() is now waiting on the handler
    assert receiver.closed
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert receiver.pending == 0
    assert len(handler.cancelled) == 1


async def test_async_context_manager_closes_and_settles_handlers() -> None:
    gate = asyncio.Event()
    handler = Recorder(gate)
    async with WebhookReceiver(SECRET, handler) as receiver:
        await deliver(receiver, event_body())
        await handler.started.wait()
        gate.set()
    assert receiver.closed
    assert receiver.pending == 0
    assert len(handler.finished) == 1
    assert handler.cancelled == []


async def test_drain_waits_for_handlers_started_while_draining() -> None:
    done: list[str] = []
    receiver: WebhookReceiver

    async def handler(event: WebhookEvent) -> None:
        if event.id == "first":
            await deliver(receiver, event_body("second"))
        done.append(event.id or "")

    receiver = WebhookReceiver(SECRET, handler)
    await deliver(receiver, event_body("first"))
    await receiver.drain()
    assert done == ["first", "second"]
    assert receiver.pending == 0


async def test_secrets_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [SECRET, "whsec_rotated_secret_abcdef"]

    async def handler(event: WebhookEvent) -> None:
        raise RuntimeError("handler failure")

    receiver = WebhookReceiver(secrets, handler, on_error=lambda e, x: None)
    text = repr(receiver) + str(receiver) + repr(receiver.stats)
    assert "secrets=2" in repr(receiver)
    await deliver(receiver, event_body("a"))  # valid; handler fails
    await deliver(receiver, event_body("a"))  # duplicate
    await deliver(receiver, event_body("b"), OTHER_SECRET)  # forged
    await receiver.receive(event_body("c"), {})  # unsigned
    await deliver(receiver, b"not json")  # malformed
    await receiver.receive(CHALLENGE, {})  # challenge
    gate_handler = Recorder(asyncio.Event())
    other = WebhookReceiver(SECRET, gate_handler)
    await deliver(other, event_body())
    await gate_handler.started.wait()
    await other.aclose(timeout=0)
    await receiver.drain()
    await receiver.aclose()
    text += repr(receiver) + caplog.text
    text += "".join(str(r.exc_info) for r in caplog.records if r.exc_info)
    for secret in (*secrets, OTHER_SECRET):
        assert secret not in text
        assert secret.encode().hex() not in text
    assert "ch_abc" not in caplog.text  # the challenge value is not logged either


@pytest.mark.parametrize(
    ("secret", "kwargs"),
    [
        ("", {}),
        (b"", {}),
        ([], {}),
        ([SECRET, ""], {}),
        (42, {}),
        ({SECRET}, {}),
        (SECRET, {"dedup_size": -1}),
        (SECRET, {"dedup_size": 1.5}),
        (SECRET, {"dedup_size": True}),
        (SECRET, {"challenge_response": "xml"}),
        (SECRET, {"on_error": "not callable"}),
    ],
)
def test_configuration_errors(secret: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        WebhookReceiver(secret, nothing, **kwargs)


def test_handler_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="handler"):
        WebhookReceiver(SECRET, None)  # type: ignore[arg-type]


def test_receiver_needs_no_running_loop() -> None:
    # Built at import time in many apps; only receive() needs the loop.
    receiver = WebhookReceiver(SECRET, nothing)
    assert receiver.pending == 0
    assert not receiver.closed


RECEIVE_HEADERS = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=70).map(
        lambda h: "sha256=" + h
    ),
)


@PROPERTY
@given(body=st.one_of(st.binary(max_size=200), ENVELOPES.map(body_of)), header=RECEIVE_HEADERS)
def test_receive_never_raises_on_hostile_input(body: bytes, header: str | None) -> None:
    async def scenario() -> None:
        handled: list[WebhookEvent] = []

        async def handler(event: WebhookEvent) -> None:
            handled.append(event)

        receiver = WebhookReceiver(SECRET, handler)
        headers = {} if header is None else {SIGNATURE_HEADER: header}
        reply = await receiver.receive(body, headers)
        assert reply.status in (200, 401)
        if reply.status == 200:
            assert isinstance(parse_event(body), VerificationChallenge)
        good = await receiver.receive(body, signed(body))
        assert good.status in (200, 400)
        await receiver.aclose()

    asyncio.run(scenario())
