"""``client.whatsapp`` against the fake server over loopback (and the pager against scripted
answers for quirks no well-behaved server produces)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from apimw_async import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    Client,
    FakeClock,
    InvalidPhoneNumberError,
    MessageStatus,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    SentMessage,
    ServerError,
    Template,
    TemplateBody,
    TemplateCurrency,
    TemplateHeaderImage,
    TemplateStatus,
    TemplateUrlButton,
    TokenManager,
    ValidationError,
    WhatsAppResource,
)
from apimw_async._envelope import ApiResponse
from apimw_async.testing import FakeAPIMW

from .client_helpers import client_for, free_port, jittered
from .conftest import drive

TO = "+1234567890"


@pytest.fixture
async def client(timed_fake: FakeAPIMW, clock: FakeClock) -> AsyncIterator[Client]:
    async with client_for(timed_fake, clock) as client:
        yield client


# --- send_text -------------------------------------------------------------------------------


async def test_send_text(client: Client, timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    sent = await client.whatsapp.send_text(TO, "Hello 👋 https://example.com", preview_url=True)
    assert isinstance(sent, SentMessage)
    assert sent.message_id.startswith("wamid.")
    assert sent.to == TO
    assert sent.status is MessageStatus.SENT
    assert sent.timestamp == datetime.fromtimestamp(int(clock.time()), timezone.utc)
    assert sent.timestamp is not None
    assert sent.timestamp.tzinfo is not None
    record = timed_fake.messages[sent.message_id]
    assert record.body == {"to": TO, "message": "Hello 👋 https://example.com", "preview_url": True}
    assert timed_fake.stats.messages_sent == 1


async def test_send_text_checks_before_sending(client: Client, timed_fake: FakeAPIMW) -> None:
    with pytest.raises(ValidationError, match=r"E\.164"):
        await client.whatsapp.send_text("1234567890", "hi")
    with pytest.raises(ValidationError, match="4096"):
        await client.whatsapp.send_text(TO, "x" * 4097)
    assert timed_fake.stats.calls.get("send", 0) == 0


async def test_validate_false_lets_the_server_decide(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    async with client_for(timed_fake, clock, validate=False) as client:
        assert client.validate is False
        with pytest.raises(InvalidPhoneNumberError) as caught:
            await client.whatsapp.send_text("12345", "hi")
        assert caught.value.code == "INVALID_PHONE_NUMBER"
        with pytest.raises(BadRequestError):
            await client.whatsapp.send_text(TO, "x" * 4097)
    assert timed_fake.stats.calls["send"] == 2
    assert timed_fake.stats.messages_sent == 0


# --- send_template ---------------------------------------------------------------------------


async def test_send_template_with_builders(client: Client, timed_fake: FakeAPIMW) -> None:
    sent = await client.whatsapp.send_template(
        TO,
        "order_confirmation",
        "en",
        components=[
            TemplateHeaderImage("https://example.com/receipt.png"),
            TemplateBody("Ann", "A-1001", TemplateCurrency.of("USD", "99.99")),
            TemplateUrlButton(0, "A-1001"),
        ],
    )
    assert sent.template == "order_confirmation"
    assert sent.status is MessageStatus.SENT
    body = timed_fake.messages[sent.message_id].body
    assert body["template"] == "order_confirmation"
    assert body["language"] == "en"
    assert body["components"][1]["parameters"][2] == {
        "type": "currency",
        "currency": {"code": "USD", "amount_1000": 99990},
    }
    assert body["components"][2]["sub_type"] == "url"


async def test_send_template_with_plain_dicts_and_none(
    client: Client, timed_fake: FakeAPIMW
) -> None:
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}]
    sent = await client.whatsapp.send_template(TO, "shipping_update", "es", components=components)
    assert timed_fake.messages[sent.message_id].body["components"] == components
    plain = await client.whatsapp.send_template(TO, "verification_code", "en")
    assert "components" not in timed_fake.messages[plain.message_id].body


async def test_send_template_errors(client: Client, timed_fake: FakeAPIMW) -> None:
    with pytest.raises(BadRequestError) as caught:
        await client.whatsapp.send_template(TO, "invoice_available", "en")  # PENDING
    assert caught.value.code == "TEMPLATE_NOT_APPROVED"
    with pytest.raises(ValidationError):
        await client.whatsapp.send_template(TO, "", "en")
    with pytest.raises(ValidationError):
        await client.whatsapp.send_template("+1 234", "order_confirmation", "en")
    assert timed_fake.stats.calls["template"] == 1


# --- get_status ------------------------------------------------------------------------------


async def test_status_follows_the_message(clock: FakeClock) -> None:
    async with (
        FakeAPIMW(
            clock=clock, message_id_style="path-unsafe", delivery_delay=1, read_delay=3
        ) as fake,
        client_for(fake, clock) as client,
    ):
        sent = await client.whatsapp.send_text(TO, "hi")
        assert {"/", "+", "="} <= set(sent.message_id)
        info = await client.whatsapp.get_status(sent.message_id)
        assert info.message_id == sent.message_id
        assert (info.status, info.to, info.type) == (MessageStatus.SENT, TO, "text")
        assert info.sent_at == sent.timestamp
        assert (info.delivered_at, info.read_at) == (None, None)
        clock.advance(1)
        info = await client.whatsapp.get_status(sent.message_id)
        assert info.status is MessageStatus.DELIVERED
        assert info.delivered_at is not None
        assert info.sent_at is not None
        assert info.delivered_at - info.sent_at == timedelta(seconds=1)
        clock.advance(2)
        info = await client.whatsapp.get_status(sent.message_id)
        assert info.status is MessageStatus.READ
        assert info.read_at is not None
        failed = await client.whatsapp.send_text("+15550000000", "hi")
        clock.advance(1)
        info = await client.whatsapp.get_status(failed.message_id)
        assert info.status is MessageStatus.FAILED
        with pytest.raises(NotFoundError):
            await client.whatsapp.get_status(sent.message_id + "x")
        with pytest.raises(ValidationError):
            await client.whatsapp.get_status("")
        with pytest.raises(ValidationError):
            await client.whatsapp.get_status("..")


async def test_message_id_is_sent_percent_encoded(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    # A server that records the raw request path: the id must arrive as one encoded segment,
    # %2F, %2B and %3D intact (yarl would otherwise turn %3D back into "=").
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        message_id = request.match_info["message_id"]
        return web.json_response(
            {"success": True, "data": {"message_id": message_id, "status": "read"}}
        )

    app = web.Application()
    app.router.add_get("/v1/whatsapp/messages/{message_id}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    message_id = "wamid.HBgL/ab+cd==%2F?x#y z"
    try:
        # Tokens from the fake server; the request to the recording server.
        async with (
            TokenManager(timed_fake.credentials, base_url=timed_fake.base_url) as tokens,
            Client(token_manager=tokens, base_url=f"http://127.0.0.1:{port}/v1") as client,
        ):
            info = await client.whatsapp.get_status(message_id)
    finally:
        await runner.cleanup()
    assert seen == ["/v1/whatsapp/messages/" + quote(message_id, safe="")]
    assert seen[0].endswith("wamid.HBgL%2Fab%2Bcd%3D%3D%252F%3Fx%23y%20z")
    assert info.message_id == message_id  # the server decoded it back


# --- templates -------------------------------------------------------------------------------


async def test_list_templates_walks_every_page(client: Client, timed_fake: FakeAPIMW) -> None:
    names = [(t.name, t.language) async for t in client.whatsapp.list_templates()]
    expected = [(t["name"], t["language"]) for t in timed_fake.templates]
    assert names == expected
    assert len(expected) > 40
    assert timed_fake.stats.calls["templates"] == -(-len(expected) // 20)


async def test_list_templates_filters(client: Client, timed_fake: FakeAPIMW) -> None:
    approved = [t async for t in client.whatsapp.list_templates(status="approved")]
    assert approved
    assert {t.status for t in approved} == {TemplateStatus.APPROVED}
    pending = [t async for t in client.whatsapp.list_templates(status=TemplateStatus.PENDING)]
    assert {t.raw_status for t in pending} == {"PENDING"}
    otp = [t async for t in client.whatsapp.list_templates(category="OTP", per_page=2)]
    assert otp
    assert {t.category for t in otp} == {"OTP"}
    assert all(isinstance(t, Template) for t in otp)
    with pytest.raises(ValidationError):
        await client.whatsapp.templates_page(status="ARCHIVED")
    with pytest.raises(ValidationError):
        await client.whatsapp.templates_page(page=0)
    with pytest.raises(ValidationError):
        await client.whatsapp.templates_page(per_page=True)  # type: ignore[arg-type]


async def test_one_page_with_its_pagination(client: Client, timed_fake: FakeAPIMW) -> None:
    page = await client.whatsapp.templates_page(page=2, per_page=10)
    assert [t.name for t in page.templates] == [t["name"] for t in timed_fake.templates[10:20]]
    assert page.pagination is not None
    assert (page.pagination.page, page.pagination.per_page) == (2, 10)
    assert page.pagination.total == len(timed_fake.templates)
    [template] = (await client.whatsapp.templates_page(per_page=1)).templates
    assert template.body is not None
    assert "{{1}}" in template.body


@pytest.mark.parametrize(
    ("quirk", "per_page", "calls"),
    [
        ("total_lies_high", 20, 3),  # stops on the short last page
        ("total_lies_high", 15, 4),  # 45 = 3 full pages, then an empty one
        ("ignores_page", 20, 2),  # page 2 is page 1 again: stop, nothing yielded twice
        ("no_pagination", 20, 1),  # nothing says there is more
    ],
)
async def test_list_templates_survives_the_fake_quirks(
    clock: FakeClock, quirk: str, per_page: int, calls: int
) -> None:
    async with (
        FakeAPIMW(clock=clock, pagination_quirk=quirk) as fake,
        client_for(fake, clock) as client,
    ):
        fake.templates = fake.templates[:45]
        found = [t async for t in client.whatsapp.list_templates(per_page=per_page)]
        assert fake.stats.calls["templates"] == calls
    expected = 45 if quirk == "total_lies_high" else per_page
    assert len(found) == expected
    assert len({(t.name, t.language) for t in found}) == expected


class ScriptedPages:
    """Stands in for the client under ``WhatsAppResource``: answers ``GET /whatsapp/templates``
    from a function of (page, per_page)."""

    validate = True

    def __init__(self, answer: Callable[[int, int], Any]) -> None:
        self.answer = answer
        self.pages: list[int] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        assert (method, path) == ("GET", "/whatsapp/templates")
        page, per_page = int(kwargs["params"]["page"]), int(kwargs["params"]["per_page"])
        self.pages.append(page)
        return ApiResponse(200, {}, self.answer(page, per_page))


def catalogue(n: int) -> list[dict[str, Any]]:
    return [
        {"name": f"t{i}", "language": "en", "status": "APPROVED", "category": "UTILITY"}
        for i in range(n)
    ]


def well_behaved(items: list[dict[str, Any]], **overrides: Any) -> Callable[[int, int], Any]:
    def answer(page: int, per_page: int) -> Any:
        pagination = {"total": len(items), "page": page, "per_page": per_page, **overrides}
        start = (page - 1) * per_page
        return {"templates": items[start : start + per_page], "pagination": pagination}

    return answer


async def walk(answer: Callable[[int, int], Any], **options: Any) -> tuple[list[str], list[int]]:
    pages = ScriptedPages(answer)
    resource = WhatsAppResource(pages)  # type: ignore[arg-type]
    names = [t.name async for t in resource.list_templates(**options)]
    return names, pages.pages


def without_pagination(page: int, per_page: int) -> Any:
    return {"templates": catalogue(per_page)}


@pytest.mark.parametrize(
    ("answer", "options", "count", "pages"),
    [
        (well_behaved(catalogue(45)), {}, 45, [1, 2, 3]),
        # exactly full pages: page * per_page >= total ends it without an empty request
        (well_behaved(catalogue(40)), {}, 40, [1, 2]),
        (well_behaved([]), {}, 0, [1]),
        # total too high: the short page ends it; with full pages, the empty one does
        (well_behaved(catalogue(45), total=10**9), {}, 45, [1, 2, 3]),
        (well_behaved(catalogue(40), total=10**9), {}, 40, [1, 2, 3]),
        # total unusable (negative, a string, missing): the same
        (well_behaved(catalogue(40), total=-1), {}, 40, [1, 2, 3]),
        (well_behaved(catalogue(40), total="40"), {}, 40, [1, 2, 3]),
        # total too low: believed (page * per_page >= total)
        (well_behaved(catalogue(45), total=20), {}, 20, [1]),
        # the server ignores page (echoing either page 1 or the asked one)
        (lambda p, n: well_behaved(catalogue(45))(1, n), {}, 20, [1, 2]),
        (lambda p, n: {**well_behaved(catalogue(45))(1, n), "pagination": None}, {}, 20, [1]),
        # no pagination object at all
        (without_pagination, {}, 20, [1]),
        # the server caps per_page and says so: its per_page is the page size
        (
            lambda p, n: well_behaved(catalogue(45))(p, 10),
            {"per_page": 100},
            45,
            [1, 2, 3, 4, 5],
        ),
        # pagination says nothing useful and pages never end: the hard cap stops it
        (
            lambda p, n: {
                "templates": [{"name": f"p{p}-{i}"} for i in range(n)],
                "pagination": {"total": None},
            },
            {"per_page": 2, "max_pages": 7},
            14,
            [1, 2, 3, 4, 5, 6, 7],
        ),
    ],
)
async def test_pagination_termination(
    answer: Callable[[int, int], Any], options: dict[str, Any], count: int, pages: list[int]
) -> None:
    names, asked = await walk(answer, **options)
    assert asked == pages
    assert len(names) == count
    assert len(set(names)) == count


async def test_hitting_the_page_cap_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def endless(page: int, per_page: int) -> Any:
        items = [{"name": f"p{page}-{i}"} for i in range(per_page)]
        return {"templates": items, "pagination": {"total": 10**12, "page": page}}

    with caplog.at_level(logging.WARNING, logger="apimw_async"):
        names, asked = await walk(endless, max_pages=3)
    assert asked == [1, 2, 3]
    assert len(names) == 60
    assert "max_pages=3" in caplog.text


async def test_breaking_out_of_the_iteration_stops_fetching() -> None:
    pages = ScriptedPages(well_behaved(catalogue(100)))
    resource = WhatsAppResource(pages)  # type: ignore[arg-type]
    iterator = resource.list_templates(per_page=10)
    async for template in iterator:
        if template.name == "t12":
            break
    await iterator.aclose()
    assert pages.pages == [1, 2]


# --- retry safety: a send is never repeated once it may have reached the server -------------


async def test_send_is_not_repeated_after_the_answer_is_lost(
    client: Client, timed_fake: FakeAPIMW
) -> None:
    timed_fake.faults.add("send", "drop", after=True)  # sent, then the connection dies
    with pytest.raises(APIConnectionError) as caught:
        await client.whatsapp.send_text(TO, "only once")
    assert caught.value.sent is True
    assert timed_fake.stats.messages_sent == 1
    assert timed_fake.stats.calls["send"] == 1


async def test_send_is_not_repeated_after_a_timeout(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    timed_fake.faults.add("send", "delay", delay=60.0, after=True)  # sent, answer never comes
    async with client_for(timed_fake, clock, timeout=0.5) as client:
        await client.tokens.get_token()
        [error] = await drive(clock, client.whatsapp.send_text(TO, "only once"))
    assert isinstance(error, APITimeoutError)
    assert timed_fake.stats.messages_sent == 1
    assert timed_fake.stats.calls["send"] == 1


@pytest.mark.parametrize("after", [True, False])
async def test_send_is_not_repeated_after_a_5xx(
    client: Client, timed_fake: FakeAPIMW, after: bool
) -> None:
    timed_fake.faults.add("send", status=500, after=after)
    with pytest.raises(ServerError):
        await client.whatsapp.send_text(TO, "only once")
    assert timed_fake.stats.calls["send"] == 1
    assert timed_fake.stats.messages_sent == (1 if after else 0)


async def test_send_is_retried_after_a_429(timed_fake: FakeAPIMW, clock: FakeClock) -> None:
    timed_fake.faults.add("send", status=429, retry_after=2, times=2)
    async with client_for(timed_fake, clock) as client:
        [sent] = await drive(clock, client.whatsapp.send_text(TO, "after the wait"))
    assert isinstance(sent, SentMessage)
    assert timed_fake.stats.calls["send"] == 3
    assert timed_fake.stats.messages_sent == 1


async def test_send_is_retried_after_connection_refused(clock: FakeClock) -> None:
    fake = FakeAPIMW(clock=clock, port=await free_port())
    await fake.start()
    try:
        async with client_for(fake, clock) as client:
            await client.tokens.get_token()
            await fake.close()  # nothing listens: the next connection is refused
            task = asyncio.create_task(client.whatsapp.send_text(TO, "after the refusal"))
            await clock.wait_for_sleepers(1)
            assert fake.stats.calls.get("send", 0) == 0
            await fake.start()
            clock.advance_to_next_deadline()
            sent = await task
    finally:
        await fake.close()
    assert sent.to == TO
    assert fake.stats.calls["send"] == 1
    assert fake.stats.messages_sent == 1


async def test_get_status_is_retried_after_a_lost_answer(
    timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    async with client_for(timed_fake, clock, retry_policy=RetryPolicy(max_attempts=5)) as client:
        sent = await client.whatsapp.send_text(TO, "hi")
        # aiohttp itself re-sends a GET once after a dropped keep-alive connection; either
        # way the server sees two dropped calls, a 502, then the one that succeeds.
        timed_fake.faults.add("status", "drop", times=2)
        timed_fake.faults.add("status", status=502)
        [info] = await drive(clock, client.whatsapp.get_status(sent.message_id))
    assert info.message_id == sent.message_id
    assert timed_fake.stats.calls["status"] == 4


# --- the plan's rate limit, enforced by the fake ---------------------------------------------


async def test_throttle_keeps_a_burst_under_the_plan_limit(clock: FakeClock) -> None:
    async with (
        FakeAPIMW(clock=clock, plan="free", enforce_rate_limit=True) as fake,
        client_for(fake, clock, max_requests_per_minute=10) as client,
    ):
        sends = [asyncio.create_task(client.whatsapp.send_text(TO, f"#{i}")) for i in range(25)]
        # Time moves only once every request of the minute has been answered.
        await clock.wait_for_sleepers(15)
        await asyncio.gather(*sends[:10])
        assert fake.stats.calls["send"] == 10
        clock.advance(60)
        await asyncio.gather(*sends[10:20])
        assert clock.sleepers == 5
        assert fake.stats.calls["send"] == 20
        clock.advance(60)
        results = await asyncio.gather(*sends)
        assert all(isinstance(r, SentMessage) for r in results)
        assert fake.stats.rate_limited == 0
        assert fake.stats.messages_sent == 25
        assert client.rate_limit is not None
        assert client.rate_limit.limit == 10


async def test_without_throttle_a_burst_meets_the_limit(clock: FakeClock) -> None:
    async with (
        FakeAPIMW(clock=clock, plan="free", enforce_rate_limit=True) as fake,
        client_for(fake, clock) as client,
    ):
        burst = (client.whatsapp.send_text(TO, f"#{i}") for i in range(12))
        results = await asyncio.gather(*burst, return_exceptions=True)
        limited = [r for r in results if isinstance(r, RateLimitError)]
        # The window ends in 60 s, beyond the default max_wait of 30 s: raised at once.
        assert len(limited) == 2
        assert {r.retry_after for r in limited} == {60}
        assert client.rate_limit is not None
        assert client.rate_limit.remaining == 0
        assert fake.stats.messages_sent == 10
    async with (
        FakeAPIMW(clock=clock, plan="free", enforce_rate_limit=True) as fake,
        client_for(fake, clock, retry_policy=RetryPolicy(max_wait=90)) as client,
    ):
        assert client.rate_limit is None
        sends = [asyncio.create_task(client.whatsapp.send_text(TO, f"#{i}")) for i in range(12)]
        # Every send reaches the server inside the first window before time moves on.
        await fake.wait_until(lambda stats: stats.calls.get("send", 0) >= 12)
        await clock.wait_for_sleepers(2)  # the two refused ones wait out the window
        assert clock.advance_to_next_deadline() == pytest.approx(jittered(60))
        results = await asyncio.gather(*sends)
        assert all(isinstance(r, SentMessage) for r in results)
        assert fake.stats.messages_sent == 12
        assert fake.stats.rate_limited == 2


async def test_a_post_the_caller_declares_idempotent_is_retried_after_a_5xx(
    client: Client, timed_fake: FakeAPIMW, clock: FakeClock
) -> None:
    timed_fake.faults.add("send", status=503)
    body = {"to": TO, "message": "I know what I am doing"}
    request = client.request("POST", "/whatsapp/messages/send", json=body, idempotent=True)
    [response] = await drive(clock, request)
    assert response.data["to"] == TO
    assert timed_fake.stats.calls["send"] == 2
    assert timed_fake.stats.messages_sent == 1
