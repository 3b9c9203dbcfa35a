"""Every example runs with its one documented command (against the fake server it starts)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from apimw_async import ConfigurationError
from apimw_async.testing import FakeAPIMW

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 180  # generous: a loaded CI machine


def run_example(name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python examples/<name> args`` from the repository root, without APIMW_* settings
    (so the example starts its own fake server) unless given in ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("APIMW_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run(  # noqa: S603 - our own interpreter and example files
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_every_example_documents_its_command() -> None:
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert text.startswith('"""'), path.name
        assert f"python examples/{path.name}" in text.split('"""')[1], path.name


# --- worker pool -------------------------------------------------------------------------------


def test_worker_pool_quick() -> None:
    proc = run_example("worker_pool.py", "--quick")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "with 4 workers via fake APIMW server" in out
    assert "messages sent        20 of 20" in out
    assert "failed               0" in out
    assert "token requests       1 (shared by all 4 workers)" in out
    assert "server saw           20 template messages" in out


def test_worker_pool_options() -> None:
    proc = run_example("worker_pool.py", "--workers", "7", "--messages", "50")
    assert proc.returncode == 0, proc.stderr
    assert "messages sent        50 of 50" in proc.stdout
    assert "token requests       1 (shared by all 7 workers)" in proc.stdout


def test_worker_pool_needs_recipients_for_the_real_api() -> None:
    # Credentials in the environment: no fake server, and no sending to made-up numbers.
    proc = run_example(
        "worker_pool.py",
        "--quick",
        APIMW_API_KEY="ak_live_example",
        APIMW_API_SECRET="sk_live_example",
        APIMW_BASE_URL="https://127.0.0.1:9/v1",
    )
    assert proc.returncode == 2
    assert "--to" in proc.stderr


# --- aiohttp session with the middleware --------------------------------------------------------


def test_middleware_session() -> None:
    proc = run_example("middleware_session.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "GET /auth/me            -> user usr_" in out
    assert "GET /whatsapp/messages  -> status sent" in out
    assert "GET /auth/me still OK (1 refusal" in out
    assert "token endpoint calls so far: 1 token + 1 refresh" in out


# --- FastAPI app -------------------------------------------------------------------------------


def test_fastapi_app_demo() -> None:
    pytest.importorskip("fastapi", minversion="0.112.2")
    pytest.importorskip("uvicorn")
    proc = run_example("fastapi_app.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "challenge answered = True" in out
    assert "POST /messages -> 200" in out
    for event in ("message.sent", "message.delivered", "message.read"):
        assert f"  {event}" in out
    assert "token requests: 1;" in out


@pytest.fixture
def example_app(apimw_env: FakeAPIMW, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``examples.fastapi_app`` imported as ``uvicorn examples.fastapi_app:app`` would, with the
    environment pointing at the fake server."""
    pytest.importorskip("fastapi", minversion="0.112.2")
    pytest.importorskip("uvicorn")
    monkeypatch.setenv("APIMW_WEBHOOK_SECRET", "whsec_example_test")
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.fastapi_app", None)
    module = importlib.import_module("examples.fastapi_app")
    yield module
    sys.modules.pop("examples.fastapi_app", None)


@pytest.mark.apimw_fake(delivery_delay=None)
async def test_fastapi_app_under_uvicorn(example_app: ModuleType, apimw_env: FakeAPIMW) -> None:
    import aiohttp

    from apimw_async.fastapi import get_app_client

    from .test_fastapi import serve

    fake = apimw_env
    app = example_app.app
    async with serve(app) as base, aiohttp.ClientSession() as http:
        client = get_app_client(app)
        hook = await client.webhooks.register(
            f"{base}/webhooks", ["message.sent"], secret="whsec_example_test"
        )
        await fake.wait_until(lambda s: s.verifications + s.verification_failures > 0)
        assert fake.webhooks[hook.id].verified

        async with http.post(f"{base}/messages", json={"to": "+15550009999", "text": "hi"}) as r:
            assert r.status == 200
            message_id = (await r.json())["message_id"]
        events = app.state.events
        await events.wait_for(lambda seen: any(e["message_id"] == message_id for e in seen))
        async with http.get(f"{base}/events") as r:
            assert [e["type"] for e in await r.json()] == ["message.sent"]
        async with http.get(f"{base}/messages/{message_id}") as r:
            assert (await r.json()) == {"message_id": message_id, "status": "sent"}

        # SDK errors become HTTP answers of the app.
        async with http.post(f"{base}/messages", json={"to": "12345", "text": "hi"}) as r:
            assert r.status == 422
        fake.faults.add("send", status=429, retry_after=60)  # beyond max_wait: raised at once
        async with http.post(f"{base}/messages", json={"to": "+15550009999", "text": "x"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "60"
        async with http.get(f"{base}/messages/wamid.unknown") as r:
            assert r.status == 404
        fake.faults.add("send", status=500)  # a send is not repeated after a 5xx
        async with http.post(f"{base}/messages", json={"to": "+15550009999", "text": "y"}) as r:
            assert r.status == 502
            assert "APIMW" in (await r.json())["detail"]
    assert fake.stats.token_calls == 1


async def test_fastapi_app_needs_the_webhook_secret(
    example_app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APIMW_WEBHOOK_SECRET")
    app: Any = example_app.create_app()
    with pytest.raises(ConfigurationError, match="APIMW_WEBHOOK_SECRET"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.apimw_fake(verify_webhooks=False)
async def test_fastapi_app_register_command(example_app: ModuleType, apimw_env: FakeAPIMW) -> None:
    webhook_id = await example_app.register("http://127.0.0.1:9/webhooks")
    hook = apimw_env.webhooks[webhook_id]
    assert hook.secret == "whsec_example_test"
    assert set(hook.events) == set(example_app.EVENTS)


# --- durable webhook workers -------------------------------------------------------------------


def test_webhook_workers_quick(redis_url: str) -> None:
    proc = run_example("webhook_workers.py", "--quick", "--redis-url", redis_url)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "2 web workers + 1 consumer-only process" in out
    assert "events stored (once each):   30" in out
    assert "events handled:              30 of 30" in out
    # Each event went to both webhooks: the second delivery was not stored again.
    redeliveries = int(out.split("redeliveries not stored:")[1].split()[0])
    assert redeliveries >= 30
