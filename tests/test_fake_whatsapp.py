"""The fake server's WhatsApp endpoints over real HTTP: send, template, message status and the
template catalogue (``_fake_whatsapp.py``, ``_fake_templates.py``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from apimw_async.testing import (
    DEFAULT_TEMPLATES,
    PAGINATION_QUIRKS,
    FakeAPIMW,
    FakeClock,
)
from tests.fake_http import (
    T0,
    call,
    get_token,
    list_templates,
    send,
    send_template,
    status_of,
)

# Every test runs on the FakeClock (``clock``) with a seeded server (``fake``), as conftest.py
# provides them.
pytestmark = [pytest.mark.usefixtures("clock"), pytest.mark.apimw_fake(seed=1234)]


# --- POST /whatsapp/messages/send ------------------------------------------------------------


async def test_send_success(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock, token: str
) -> None:
    reply = await send(http, fake, token, preview_url=True)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    data = reply.data
    assert set(data) == {"message_id", "to", "status", "timestamp"}
    assert re.fullmatch(r"wamid\.HBgL[A-Za-z0-9_-]{20,}", data["message_id"])
    assert data["to"] == "+1234567890"
    assert data["status"] == "sent"
    assert data["timestamp"] == T0
    assert fake.stats.messages_sent == 1
    assert fake.stats.calls["send"] == 1
    assert fake.message_status(data["message_id"]) == "sent"
    record = fake.messages[data["message_id"]]
    assert record.type == "text"
    assert record.body["preview_url"] is True
    # Timestamps follow the server clock; ids are unique.
    clock.advance(125.7)
    later = (await send(http, fake, token)).data
    assert later["timestamp"] == "2026-01-01T00:02:05Z"
    assert later["message_id"] != data["message_id"]
    assert clock.sleepers == 0  # no webhooks: the server never sleeps on the clock


E164_VALID = [
    "+1234567890",
    "+12345678",  # 8 digits
    "+123456789012345",  # 15 digits
    "+447911123456",
    "+5511987654321",
]
E164_INVALID = [
    "1234567890",  # no +
    "+0123456789",  # leading zero
    "+1234567",  # 7 digits
    "+1234567890123456",  # 16 digits
    "+1 234 567 890",
    "+1-234-567-8901",
    "++1234567890",
    "+12345678a9",
    "",
    "+",
    " +1234567890",
    "+1234567890\n",
    "+١٢٣٤٥٦٧٨٩٠",  # Arabic-Indic digits are digits, but not E.164
    "00441234567890",
]


@pytest.mark.parametrize("to", E164_VALID)
async def test_e164_accepted(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, to: str
) -> None:
    reply = await send(http, fake, token, to=to)
    assert reply.status == 200, reply.text
    assert reply.data["to"] == to


@pytest.mark.parametrize("to", E164_INVALID)
async def test_e164_rejected(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, to: str
) -> None:
    reply = await send(http, fake, token, to=to)
    assert reply.status == 400
    assert reply.body == {
        "success": False,
        "error": {"code": "INVALID_PHONE_NUMBER", "message": "The phone number format is invalid"},
    }
    assert fake.stats.messages_sent == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"message": "hi"}, "to is required"),
        ({"to": 1234567890, "message": "hi"}, "to is required"),
        ({"to": "+1234567890"}, "message is required"),
        ({"to": "+1234567890", "message": None}, "message is required"),
        ({"to": "+1234567890", "message": ["hi"]}, "message is required"),
        ({"to": "+1234567890", "message": ""}, "must not be empty"),
        ({"to": "+1234567890", "message": "x" * 4097}, "at most 4096 characters (got 4097)"),
        ({"to": "+1234567890", "message": "hi", "preview_url": "yes"}, "preview_url"),
    ],
)
async def test_send_invalid_request(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, body: dict[str, Any], needle: str
) -> None:
    reply = await call(http, fake, "POST", "/whatsapp/messages/send", token=token, json=body)
    assert reply.status == 400
    assert reply.code == "INVALID_REQUEST"
    assert needle in reply.message
    assert fake.stats.messages_sent == 0


@pytest.mark.parametrize("text", ["x" * 4096, "😀" * 4096, "é" * 4096, "x"])
async def test_message_length_limit_counts_characters(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, text: str
) -> None:
    assert (await send(http, fake, token, message=text)).status == 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": b"not json"},
        {"data": b""},
        {"data": b'{"to": "+1234567890", "message": '},
        {"json": ["+1234567890", "hi"]},
        {"json": "hi"},
        {"data": {"to": "+1234567890", "message": "hi"}},  # form-encoded
    ],
)
@pytest.mark.parametrize(
    "path", ["/whatsapp/messages/send", "/whatsapp/messages/template", "/webhooks"]
)
async def test_garbled_bodies(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, path: str, kwargs: dict[str, Any]
) -> None:
    reply = await call(http, fake, "POST", path, token=token, **kwargs)
    assert reply.status == 400
    assert reply.code == "INVALID_REQUEST"
    assert reply.message == "Request body must be a JSON object"


# --- POST /whatsapp/messages/template --------------------------------------------------------

SPEC_COMPONENTS = [
    {
        "type": "header",
        "parameters": [{"type": "image", "image": {"link": "https://example.com/logo.png"}}],
    },
    {
        "type": "body",
        "parameters": [
            {"type": "text", "text": "John"},
            {"type": "text", "text": "ORD-12345"},
            {"type": "currency", "currency": {"code": "USD", "amount_1000": 99990}},
        ],
    },
    {
        "type": "button",
        "sub_type": "url",
        "index": 0,
        "parameters": [{"type": "text", "text": "ORD-12345"}],
    },
]


async def test_template_success(http: aiohttp.ClientSession, fake: FakeAPIMW, token: str) -> None:
    reply = await send_template(http, fake, token, components=SPEC_COMPONENTS)
    assert reply.status == 200, reply.text
    data = reply.data
    assert set(data) == {"message_id", "to", "template", "status", "timestamp"}
    assert data["message_id"].startswith("wamid.")
    assert data["to"] == "+1234567890"
    assert data["template"] == "order_confirmation"
    assert data["status"] == "sent"
    assert data["timestamp"] == T0
    assert fake.stats.messages_sent == 1
    assert fake.stats.calls["template"] == 1
    assert fake.messages[data["message_id"]].body["components"] == SPEC_COMPONENTS
    status = await status_of(http, fake, token, data["message_id"])
    assert status.data["type"] == "template"


@pytest.mark.parametrize(
    "components",
    [
        None,
        [],
        [{"type": "body"}],
        [{"type": "body", "parameters": []}],
        [{"type": "button", "sub_type": "quick_reply", "index": "1", "parameters": []}],
        [{"type": "button", "sub_type": "url", "index": 2}],
        [{"type": "header", "parameters": [{"type": "document", "document": {"id": "123"}}]}],
        [{"type": "body", "parameters": [{"type": "date_time", "date_time": {}}]}],
        [
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": 0,
                "parameters": [{"type": "payload", "payload": "YES"}],
            }
        ],
    ],
)
async def test_template_components_accepted(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, components: Any
) -> None:
    reply = await send_template(http, fake, token, components=components)
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    ("components", "needle"),
    [
        ({"type": "body"}, "components must be an array"),
        ("body", "components must be an array"),
        ([["body"]], "components[0] must be an object"),
        ([{"type": "BODY"}], "components[0].type must be one of header, body, button"),
        ([{"type": "footer"}], "components[0].type"),
        ([{"parameters": []}], "components[0].type"),
        ([{"type": "body"}, {"type": "button", "index": 0}], "components[1].sub_type"),
        ([{"type": "button", "sub_type": "url"}], "components[0].index"),
        ([{"type": "button", "sub_type": "url", "index": -1}], "components[0].index"),
        ([{"type": "button", "sub_type": "url", "index": "first"}], "components[0].index"),
        ([{"type": "button", "sub_type": "url", "index": True}], "components[0].index"),
        ([{"type": "button", "sub_type": "", "index": 0}], "components[0].sub_type"),
        ([{"type": "body", "parameters": {"type": "text"}}], "parameters must be an array"),
        ([{"type": "body", "parameters": ["John"]}], "parameters[0] must be an object"),
        ([{"type": "body", "parameters": [{"type": "text"}]}], "parameters[0].text"),
        ([{"type": "body", "parameters": [{"type": "text", "text": 5}]}], "parameters[0].text"),
        ([{"type": "body", "parameters": [{"type": "emoji"}]}], "parameters[0].type"),
        (
            [{"type": "body", "parameters": [{"type": "currency", "currency": {"code": "USD"}}]}],
            "amount_1000",
        ),
        (
            [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "currency", "currency": {"code": "USD", "amount_1000": 99.99}}
                    ],
                }
            ],
            "integer amount_1000",
        ),
        (
            [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "currency", "currency": {"code": "USD", "amount_1000": "99990"}}
                    ],
                }
            ],
            "integer amount_1000",
        ),
        (
            [
                {
                    "type": "body",
                    "parameters": [{"type": "currency", "currency": {"amount_1000": 99990}}],
                }
            ],
            "needs a code",
        ),
        (
            [{"type": "header", "parameters": [{"type": "image", "image": {}}]}],
            "image needs a link or an id",
        ),
        ([{"type": "header", "parameters": [{"type": "video"}]}], "video needs a link"),
    ],
)
async def test_template_components_rejected(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, components: Any, needle: str
) -> None:
    reply = await send_template(http, fake, token, components=components)
    assert reply.status == 400
    assert reply.code == "INVALID_REQUEST"
    assert needle in reply.message, reply.message
    assert fake.stats.messages_sent == 0


@pytest.mark.parametrize(
    ("fields", "status", "code", "needle"),
    [
        ({"template": "no_such_template"}, 400, "TEMPLATE_NOT_FOUND", "'no_such_template'"),
        ({"language": "fr"}, 400, "TEMPLATE_NOT_FOUND", "available: en, es, pt_BR"),
        ({"template": "invoice_available"}, 400, "TEMPLATE_NOT_APPROVED", "status: PENDING"),
        ({"template": "flash_sale"}, 400, "TEMPLATE_NOT_APPROVED", "status: REJECTED"),
        ({"template": None}, 400, "INVALID_REQUEST", "template is required"),
        ({"template": ""}, 400, "INVALID_REQUEST", "template is required"),
        ({"language": None}, 400, "INVALID_REQUEST", "language is required"),
        ({"language": {"code": "en"}}, 400, "INVALID_REQUEST", "language is required"),
        ({"to": "1234567890"}, 400, "INVALID_PHONE_NUMBER", "phone number format is invalid"),
        ({"to": None}, 400, "INVALID_REQUEST", "to is required"),
    ],
)
async def test_template_errors(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    fields: dict[str, Any],
    status: int,
    code: str,
    needle: str,
) -> None:
    reply = await send_template(http, fake, token, **fields)
    assert reply.status == status
    assert reply.code == code
    assert needle in reply.message, reply.message
    assert fake.stats.messages_sent == 0


@pytest.mark.parametrize(
    ("name", "language"),
    [("order_confirmation", "es"), ("shipping_update", "en"), ("appointment_reminder", "fr")],
)
async def test_template_translations(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, name: str, language: str
) -> None:
    reply = await send_template(http, fake, token, template=name, language=language)
    assert reply.status == 200
    assert reply.data["template"] == name


async def test_custom_catalogue(http: aiohttp.ClientSession, clock: FakeClock) -> None:
    catalogue = [
        {"name": "hello", "language": "en", "status": "APPROVED", "category": "UTILITY"},
        {"name": "promo", "language": "en", "status": "PENDING", "category": "MARKETING"},
    ]
    async with FakeAPIMW(clock=clock, templates=catalogue) as fake:
        catalogue[0]["status"] = "REJECTED"  # the server keeps its own copy
        token = await get_token(http, fake)
        assert (await send_template(http, fake, token, template="hello")).status == 200
        assert (await send_template(http, fake, token)).code == "TEMPLATE_NOT_FOUND"
        listing = (await list_templates(http, fake, token)).data
        assert [t["name"] for t in listing["templates"]] == ["hello", "promo"]
        assert listing["pagination"] == {"total": 2, "page": 1, "per_page": 20}
        # The catalogue may change while the server runs.
        fake.templates[1]["status"] = "APPROVED"
        assert (await send_template(http, fake, token, template="promo")).status == 200
    with pytest.raises(ValueError, match="lacks"):
        FakeAPIMW(templates=[{"name": "x", "language": "en"}])


# --- GET /whatsapp/messages/{message_id} -----------------------------------------------------


async def test_status_progression(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock, token: str
) -> None:
    message_id = (await send(http, fake, token)).data["message_id"]

    async def snapshot() -> dict[str, Any]:
        reply = await status_of(http, fake, token, message_id)
        assert reply.status == 200
        data: dict[str, Any] = reply.data
        assert set(data) == {"message_id", "to", "type", "status", "timestamps"}
        assert data["message_id"] == message_id
        assert data["to"] == "+1234567890"
        assert data["type"] == "text"
        return data

    first = await snapshot()
    assert first["status"] == "sent"
    assert first["timestamps"] == {"sent": T0, "delivered": None, "read": None}
    clock.advance(0.999)
    assert (await snapshot())["status"] == "sent"
    clock.advance(0.001)
    delivered = await snapshot()
    assert delivered["status"] == "delivered"
    assert delivered["timestamps"] == {
        "sent": T0,
        "delivered": "2026-01-01T00:00:01Z",
        "read": None,
    }
    clock.advance(1.5)
    assert (await snapshot())["status"] == "delivered"
    clock.advance(0.5)
    read = await snapshot()
    assert read["status"] == "read"
    assert read["timestamps"] == {
        "sent": T0,
        "delivered": "2026-01-01T00:00:01Z",
        "read": "2026-01-01T00:00:03Z",
    }
    clock.advance(3000)  # (within the token's hour)
    assert (await snapshot()) == read
    assert fake.stats.calls["status"] == 6


@pytest.mark.parametrize("to", ["+15550000000", "+4470000000"])
async def test_failing_numbers(
    http: aiohttp.ClientSession, fake: FakeAPIMW, clock: FakeClock, token: str, to: str
) -> None:
    message_id = (await send(http, fake, token, to=to)).data["message_id"]
    assert (await status_of(http, fake, token, message_id)).data["status"] == "sent"
    clock.advance(1)
    failed = (await status_of(http, fake, token, message_id)).data
    assert failed["status"] == "failed"
    assert failed["timestamps"] == {"sent": T0, "delivered": None, "read": None}
    clock.advance(10)
    assert (await status_of(http, fake, token, message_id)).data["status"] == "failed"


async def test_status_options(http: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeAPIMW(
        clock=clock, delivery_delay=5, read_delay=None, failing_numbers=["99"]
    ) as fake:
        token = await get_token(http, fake)
        never_read = (await send(http, fake, token)).data["message_id"]
        failing = (await send(http, fake, token, to="+12345678999")).data["message_id"]
        fine = (await send(http, fake, token, to="+12340000000")).data["message_id"]
        clock.advance(4.9)
        assert fake.message_status(never_read) == "sent"
        clock.advance(0.1)
        assert fake.message_status(failing) == "failed"
        assert fake.message_status(fine) == "delivered"
        clock.advance(3000)
        assert fake.message_status(never_read) == "delivered"
        fake.delivery_delay = None  # applies to messages sent from now on
        stuck = (await send(http, fake, token)).data["message_id"]
        fake.delivery_delay, fake.read_delay = 2.0, 1.0  # read cannot precede delivery
        early = (await send(http, fake, token)).data["message_id"]
        clock.advance(2)
        assert fake.message_status(stuck) == "sent"
        data = (await status_of(http, fake, token, early)).data
        assert data["status"] == "read"
        assert data["timestamps"]["delivered"] == data["timestamps"]["read"]
        with pytest.raises(KeyError):
            fake.message_status("wamid.unknown")


async def test_status_unknown_message(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    reply = await status_of(http, fake, token, "wamid.HBgLdoesnotexist")
    assert reply.status == 404
    assert reply.code == "MESSAGE_NOT_FOUND"
    assert "wamid.HBgLdoesnotexist" in reply.message


async def test_path_unsafe_ids_must_be_url_encoded(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeAPIMW(clock=clock, message_id_style="path-unsafe") as fake:
        token = await get_token(http, fake)
        ids = [(await send(http, fake, token)).data["message_id"] for _ in range(5)]
        for message_id in ids:
            assert message_id.startswith("wamid.HBgL")
            assert "/" in message_id
            assert "+" in message_id
            assert message_id.endswith("==")
            encoded = await status_of(http, fake, token, message_id)
            assert encoded.status == 200, encoded.text
            assert encoded.data["message_id"] == message_id
            # A client that does not encode the id reaches another path.
            raw = await call(
                http, fake, "GET", "/whatsapp/messages/" + message_id, token=token, encoded=True
            )
            assert raw.status == 404
            # Double encoding is a different (unknown) id.
            twice = await call(
                http,
                fake,
                "GET",
                "/whatsapp/messages/" + quote(quote(message_id, safe=""), safe=""),
                token=token,
                encoded=True,
            )
            assert twice.status == 404
            assert twice.code == "MESSAGE_NOT_FOUND"
        fake.message_id_style = "urlsafe"
        plain = (await send(http, fake, token)).data["message_id"]
        assert re.fullmatch(r"wamid\.HBgL[A-Za-z0-9_-]+", plain)
        with pytest.raises(ValueError, match="message_id_style"):
            fake.message_id_style = "weird"


# --- GET /whatsapp/templates -----------------------------------------------------------------


async def test_templates_first_page(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    reply = await list_templates(http, fake, token)
    assert reply.status == 200
    data = reply.data
    assert set(data) == {"templates", "pagination"}
    assert data["pagination"] == {"total": len(DEFAULT_TEMPLATES), "page": 1, "per_page": 20}
    assert len(data["templates"]) == 20
    for template in data["templates"]:
        assert set(template) == {"name", "language", "status", "category", "components"}
        assert template["status"] in {"APPROVED", "PENDING", "REJECTED"}
        assert template["category"] in {"TRANSACTIONAL", "MARKETING", "OTP", "UTILITY"}
        types = [c["type"] for c in template["components"]]
        assert "BODY" in types
        assert all(t == t.upper() for t in types)
    first = data["templates"][0]
    assert first["name"] == "order_confirmation"
    assert first["components"][0] == {"type": "HEADER", "format": "TEXT", "text": "Order Confirmed"}
    assert "{{1}}" in first["components"][1]["text"]
    assert fake.stats.calls["templates"] == 1


async def test_catalogue_contents() -> None:
    assert 40 <= len(DEFAULT_TEMPLATES) <= 50
    names = {t["name"] for t in DEFAULT_TEMPLATES}
    assert {"order_confirmation", "shipping_update", "appointment_reminder"} <= names
    assert {t["category"] for t in DEFAULT_TEMPLATES} == {
        "TRANSACTIONAL",
        "MARKETING",
        "OTP",
        "UTILITY",
    }
    assert {t["status"] for t in DEFAULT_TEMPLATES} == {"APPROVED", "PENDING", "REJECTED"}
    keys = [(t["name"], t["language"]) for t in DEFAULT_TEMPLATES]
    assert len(keys) == len(set(keys))


async def pages(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, **params: Any
) -> list[dict[str, Any]]:
    """Every page a careful client would fetch: stop at an empty or short page, or at total."""
    result: list[dict[str, Any]] = []
    page = 1
    while True:
        reply = await list_templates(http, fake, token, page=page, **params)
        assert reply.status == 200
        data = reply.data
        result.append(data)
        per_page = int(params.get("per_page", 20))
        pagination = data.get("pagination")
        if (
            len(data["templates"]) < per_page
            or (pagination is not None and pagination["page"] != page)
            or (pagination is not None and page * per_page >= pagination["total"])
        ):
            return result
        page += 1


@pytest.mark.parametrize("per_page", [1, 7, 20, 45, 100])
async def test_templates_all_pages(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, per_page: int
) -> None:
    fetched = await pages(http, fake, token, per_page=per_page)
    items = [t for page in fetched for t in page["templates"]]
    assert items == list(DEFAULT_TEMPLATES)
    assert len(fetched) == -(-len(DEFAULT_TEMPLATES) // per_page)
    for number, page in enumerate(fetched, start=1):
        assert page["pagination"] == {
            "total": len(DEFAULT_TEMPLATES),
            "page": number,
            "per_page": per_page,
        }


async def test_templates_beyond_the_last_page(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    data = (await list_templates(http, fake, token, page=4)).data
    assert data["templates"] == []
    assert data["pagination"] == {"total": 45, "page": 4, "per_page": 20}
    huge = (await list_templates(http, fake, token, page=10**8)).data
    assert huge["templates"] == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "APPROVED"}, lambda t: t["status"] == "APPROVED"),
        ({"status": "PENDING"}, lambda t: t["status"] == "PENDING"),
        ({"status": "REJECTED"}, lambda t: t["status"] == "REJECTED"),
        ({"category": "OTP"}, lambda t: t["category"] == "OTP"),
        (
            {"category": "MARKETING", "status": "APPROVED"},
            lambda t: t["category"] == "MARKETING" and t["status"] == "APPROVED",
        ),
        ({"category": "NEWSLETTER"}, lambda t: False),
        ({"status": ""}, lambda t: True),
    ],
)
async def test_templates_filters(
    http: aiohttp.ClientSession,
    fake: FakeAPIMW,
    token: str,
    params: dict[str, str],
    expected: Any,
) -> None:
    want = [t for t in DEFAULT_TEMPLATES if expected(t)]
    fetched = await pages(http, fake, token, per_page=10, **params)
    assert [t for page in fetched for t in page["templates"]] == want
    assert fetched[0]["pagination"]["total"] == len(want)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"status": "approved"}, "status must be one of APPROVED, PENDING, REJECTED"),
        ({"status": "DRAFT"}, "status must be one of"),
        ({"page": "0"}, "page must be a positive integer"),
        ({"page": "-1"}, "page must be a positive integer"),
        ({"page": "two"}, "page must be a positive integer"),
        ({"page": "1.5"}, "page must be a positive integer"),
        ({"per_page": "0"}, "per_page must be a positive integer"),
        ({"per_page": "ten"}, "per_page must be a positive integer"),
    ],
)
async def test_templates_invalid_query(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str, params: dict[str, str], needle: str
) -> None:
    reply = await list_templates(http, fake, token, **params)
    assert reply.status == 400
    assert reply.code == "INVALID_REQUEST"
    assert needle in reply.message


async def test_templates_per_page_is_capped(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    data = (await list_templates(http, fake, token, per_page=500)).data
    assert data["pagination"] == {"total": 45, "page": 1, "per_page": 100}
    assert len(data["templates"]) == 45


async def test_quirk_total_lies_high(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    fake.pagination_quirk = "total_lies_high"
    fetched = await pages(http, fake, token, per_page=20)
    assert [t for page in fetched for t in page["templates"]] == list(DEFAULT_TEMPLATES)
    assert all(page["pagination"]["total"] > len(DEFAULT_TEMPLATES) for page in fetched)
    # Trusting total alone leads to empty pages past the real end.
    fourth = (await list_templates(http, fake, token, page=4)).data
    assert fourth["templates"] == []
    assert fourth["pagination"]["total"] > 3 * 20


async def test_quirk_ignores_page(http: aiohttp.ClientSession, fake: FakeAPIMW, token: str) -> None:
    fake.pagination_quirk = "ignores_page"
    first = (await list_templates(http, fake, token, page=1, per_page=10)).data
    second = (await list_templates(http, fake, token, page=2, per_page=10)).data
    assert second["templates"] == first["templates"] == list(DEFAULT_TEMPLATES[:10])
    assert second["pagination"] == {"total": 45, "page": 1, "per_page": 10}
    fetched = await pages(http, fake, token, per_page=10)
    assert len(fetched) == 2  # the careful pager notices the page number and stops


async def test_quirk_no_pagination(
    http: aiohttp.ClientSession, fake: FakeAPIMW, token: str
) -> None:
    fake.pagination_quirk = "no_pagination"
    data = (await list_templates(http, fake, token, per_page=20)).data
    assert set(data) == {"templates"}
    fetched = await pages(http, fake, token, per_page=20)
    assert [t for page in fetched for t in page["templates"]] == list(DEFAULT_TEMPLATES)
    fake.pagination_quirk = None
    assert "pagination" in (await list_templates(http, fake, token)).data


def test_quirk_validation() -> None:
    assert {"total_lies_high", "ignores_page", "no_pagination"} == PAGINATION_QUIRKS
    with pytest.raises(ValueError, match="pagination_quirk"):
        FakeAPIMW(pagination_quirk="random")
    assert FakeAPIMW(pagination_quirk="ignores_page").pagination_quirk == "ignores_page"
