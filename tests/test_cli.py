"""The ``apimw-async`` API commands, in-process and as a real subprocess, against a fake server.

``main()`` runs its own event loop (``asyncio.run``), so these tests are synchronous and the
fake server runs in a thread with its own loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apimw_async.cli import main
from apimw_async.testing import FakeAPIMW

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


class Served:
    """A FakeAPIMW running in a background thread's event loop."""

    def __init__(self) -> None:
        self.fake = FakeAPIMW(verify_webhooks=False)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-apimw", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.fake.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.fake.close())
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30), "the fake server did not start"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the server's loop (for changing its state between commands)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def env(self) -> dict[str, str]:
        creds = self.fake.credentials
        return {
            "APIMW_BASE_URL": self.fake.base_url,
            "APIMW_API_KEY": creds.api_key,
            "APIMW_API_SECRET": creds.api_secret,
        }


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    server = Served()
    server.start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert (code, err) == (0, ""), err
    return json.loads(out)


def test_token_never_prints_the_token_unless_asked(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "token")
    assert (code, err) == (0, "")
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["token_type"] == "Bearer"
    assert lines["expires_in"] == "3600 s"
    assert len(lines["fingerprint"]) == 8
    assert "eyJ" not in out  # no JWT
    data = run_json(capsys, "token")
    assert set(data) == {"token_type", "expires_in", "fingerprint"}  # each run: a new token
    assert (data["token_type"], data["expires_in"]) == ("Bearer", 3600)
    shown = run_json(capsys, "token", "--show")
    assert shown["access_token"].startswith("eyJ")
    assert served.fake.is_access_token_valid(shown["access_token"])


def test_me(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "me")
    assert code == 0
    assert "Example Org" in out
    assert "whatsapp:send, whatsapp:templates, webhooks:manage" in out
    data = run_json(capsys, "me")
    assert data["tenant"]["plan"] == "professional"
    assert data["permissions"] == ["whatsapp:send", "whatsapp:templates", "webhooks:manage"]


def test_send_then_status(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    sent = run_json(capsys, "send", "--to", "+1234567890", "--message", "Hello from the CLI")
    assert sent["message_id"].startswith("wamid.")
    assert sent["status"] == "sent"
    assert sent["timestamp"].endswith("Z")
    assert served.fake.stats.messages_sent == 1
    record = served.fake.messages[sent["message_id"]]
    assert record.body["message"] == "Hello from the CLI"
    assert record.body["preview_url"] is False
    status = run_json(capsys, "status", sent["message_id"])
    assert status["message_id"] == sent["message_id"]
    assert status["status"] in ("sent", "delivered", "read")
    code, out, _ = run(capsys, "send", "--to", "+1234567890", "--message", "x", "--preview-url")
    assert code == 0
    assert "message_id" in out
    assert served.fake.stats.messages_sent == 2


def test_templates(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    approved = run_json(capsys, "templates", "--status", "approved")
    expected = [t for t in served.fake.templates if t["status"] == "APPROVED"]
    assert [(t["name"], t["language"]) for t in approved] == [
        (t["name"], t["language"]) for t in expected
    ]
    assert {t["status"] for t in approved} == {"APPROVED"}
    code, out, _ = run(capsys, "templates", "--category", "OTP")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "LANGUAGE", "STATUS", "CATEGORY"]
    assert rows
    assert all(row.split()[3] == "OTP" for row in rows)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["send", "--to", "12345", "--message", "hi"], "ValidationError: to must be an E.164"),
        (["status", "wamid.nope"], "NotFoundError: HTTP 404 MESSAGE_NOT_FOUND"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    served: Served, capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert err.startswith(f"apimw-async: {error}")
    assert err.count("\n") == 1


def test_server_messages_are_kept_on_one_line(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.call(lambda: served.fake.faults.add("me", status=403, message="no\nway\r\nin"))
    code, _, err = run(capsys, "me")
    assert code == 1
    assert err == "apimw-async: PermissionDeniedError: HTTP 403 FORBIDDEN: no way in\n"


def test_wrong_credentials(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_wrong_secret_0000")
    code, out, err = run(capsys, "me")
    assert (code, out) == (1, "")
    assert err == (
        "apimw-async: InvalidCredentialsError: HTTP 401 INVALID_CREDENTIALS: "
        "Invalid API Key or Secret\n"
    )
    assert "sk_test_wrong" not in err


def test_missing_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("APIMW_API_KEY", "APIMW_API_SECRET", "APIMW_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(capsys, "me")
    assert code == 1
    assert err == (
        "apimw-async: ConfigurationError: environment variable APIMW_API_KEY is not set or "
        "is empty\n"
    )


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["send", "--to", "+1234567890"])
    assert caught.value.code == 2
    assert "--message" in capsys.readouterr().err


def test_python_m_apimw_async_me_in_a_subprocess(served: Served) -> None:
    env = {**os.environ, **served.env()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "apimw_async", "me", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["user"]["id"].startswith("usr_")
    assert data["tenant"]["plan"] == "professional"
    assert served.fake.stats.me_calls == 1
