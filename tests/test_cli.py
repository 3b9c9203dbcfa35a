"""The ``apimw-async`` API commands, in-process and as a real subprocess, against a fake server.

``main()`` runs its own event loop (``asyncio.run``), so these tests are synchronous and the
fake server runs in a thread with its own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apimw_async import (
    Client,
    ConfigurationError,
    Credentials,
    FakeClock,
    ServerError,
    TokenUnavailableError,
)
from apimw_async import cli as cli_module
from apimw_async.cli import SLOW_NOTICE_AFTER, _api, _parser, main
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


# --- what a shell user meets ------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout importable, buffered stdout (as a
    user's shell has it, whatever this test run sets)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(
    *argv: str, env: dict[str, str], stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and package
        [sys.executable, "-m", "apimw_async", *argv],
        env=env,
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_wrong_credentials_print_exactly_one_line(served: Served) -> None:
    # The token manager logs the refusal too; with no logging configured that record must
    # not reach stderr through logging's last-resort handler.
    env = cli_env(**{**served.env(), "APIMW_API_SECRET": "sk_test_wrong_0000"})
    done = run_cli("me", env=env)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "apimw-async: InvalidCredentialsError: HTTP 401 INVALID_CREDENTIALS: "
        "Invalid API Key or Secret\n"
    )


def test_library_records_print_nothing_unless_logging_is_configured() -> None:
    script = (
        "import logging, apimw_async\n"
        "logging.getLogger('apimw_async.tokens').error('library error')\n"
        "logging.getLogger('apimw_async').warning('library warning')\n"
        "logging.getLogger('an_application').warning('application warning')\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The application's own record still reaches the last-resort handler: only ours are quiet.
    assert done.stderr == "application warning\n"
    configured = script.replace("apimw_async\n", "apimw_async\nlogging.basicConfig()\n", 1)
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", configured],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "ERROR:apimw_async.tokens:library error" in done.stderr  # configured: shown
    assert any(
        isinstance(h, logging.NullHandler) for h in logging.getLogger("apimw_async").handlers
    )


def test_verbose_shows_the_sdk_records(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_wrong_secret_0000")
    level = logging.getLogger("apimw_async").level
    code, _, err = run(capsys, "me", "--verbose")
    assert code == 1
    *logged, last = err.splitlines()
    assert any("token endpoint refused the credentials" in line for line in logged)
    assert last.startswith("apimw-async: InvalidCredentialsError: ")
    assert "sk_test_wrong" not in err
    assert logging.getLogger("apimw_async").level == level  # put back after the command


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_closed_pipe_ends_quietly(served: Served, unbuffered: bool) -> None:
    env = cli_env(**served.env(), **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first row (`| head -0`, deterministic)
    try:
        listing = run_cli("templates", env=env, stdout=write)
        help_ = run_cli("templates", "--help", env=env, stdout=write)
    finally:
        os.close(write)
    assert (listing.returncode, listing.stderr) == (141, "")
    assert help_.stderr == ""
    assert help_.returncode in (0, 141)  # argparse itself ignores a failed write of --help


def test_a_pipe_closed_midway_ends_quietly(served: Served) -> None:
    # As a user meets it: `apimw-async templates | head -3`, whichever side finishes first.
    command = f"{sys.executable} -m apimw_async templates | head -3"
    done = subprocess.run(  # noqa: S603 - our own interpreter and package
        ["/bin/sh", "-c", command],
        env=cli_env(**served.env()),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 3
    assert done.stderr == ""


def test_unreachable_host_is_named_in_one_line() -> None:
    port = closed_port()
    env = cli_env(APIMW_API_KEY="ak_test_k", APIMW_API_SECRET="sk_test_s")
    base = f"http://127.0.0.1:{port}/v1"
    done = run_cli("me", "--base-url", base, "--timeout", "0.5", env=env)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.count("\n") == 1  # not a terminal: no progress note either
    assert done.stderr.startswith("apimw-async: TokenUnavailableError: no token after ")
    assert f"POST http://127.0.0.1:{port}/v1/auth/token: cannot connect" in done.stderr
    assert "Connection refused" in done.stderr
    assert "sk_test_s" not in done.stderr


def test_base_url_from_the_environment_is_named_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("APIMW_API_KEY", "ak_test_k")
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_s")
    monkeypatch.setenv("APIMW_BASE_URL", f"http://localhost:{port}/v1")
    code, out, err = run(capsys, "templates", "--timeout", "0.3")
    assert (code, out) == (1, "")
    assert f"http://localhost:{port}/v1/auth/token: cannot connect" in err
    assert err.count("\n") == 1


def test_plain_http_refusal_names_the_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", "ak_test_k")
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_s")
    code, out, err = run(capsys, "me", "--base-url", "http://api.example.com/v1")
    assert (code, out) == (1, "")
    assert err == (
        "apimw-async: ConfigurationError: refusing plain-http base_url for non-loopback host "
        "'api.example.com': APIMW requires HTTPS; pass --allow-insecure-http to override "
        "(never in production)\n"
    )
    # The library names its own keyword argument instead.
    with pytest.raises(ConfigurationError, match=r"pass allow_insecure_http=True to override"):
        Client(Credentials("ak_test_k", "sk_test_s"), base_url="http://api.example.com/v1")


def test_allow_insecure_http_lets_the_cli_try_the_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", "ak_test_k")
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_s")
    # TEST-NET-1 (RFC 5737): never routed, so the attempt fails, but it is made.
    base = "http://192.0.2.1:9/v1"
    code, _, err = run(
        capsys, "me", "--base-url", base, "--allow-insecure-http", "--timeout", "0.3"
    )
    assert code == 1
    assert "refusing" not in err
    assert "http://192.0.2.1:9/v1/auth/token" in err
    assert err.count("\n") == 1


def test_base_url_flag_overrides_the_environment(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    data = run_json(capsys, "me", "--base-url", served.fake.base_url)
    assert data["tenant"]["plan"] == "professional"
    assert served.fake.stats.me_calls == 1


def all_parsers() -> list[argparse.ArgumentParser]:
    parser = _parser()
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.values())
    return found


@pytest.mark.parametrize("parser", all_parsers(), ids=lambda p: p.prog)
def test_every_option_has_help_without_markup(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        assert action.help, (parser.prog, action.dest)
        assert action.help != argparse.SUPPRESS, (parser.prog, action.dest)
    text = parser.format_help()
    assert "``" not in text
    assert ":class:" not in text
    assert ":meth:" not in text
    assert parser.description


def test_help_lists_the_commands_the_environment_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "fake-server", "templates", "APIMW_BASE_URL", "141", "130"):
        assert word in out
    assert "``" not in out


def test_fake_server_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "fake-server", "--port", str(port))
    assert (code, out) == (1, "")
    assert err.startswith(f"apimw-async: cannot listen on 127.0.0.1:{port}: ")
    assert err.count("\n") == 1


# --- the note on a terminal, on the test's clock ----------------------------------------------


NOTE = "still retrying"


async def run_api(
    clock: FakeClock, *argv: str, tty: bool
) -> tuple[BaseException | None, str, list[float]]:
    """Run an API command in this loop; time jumps whenever everything waits on ``clock``.

    Returns the error (or ``None``), what went to stderr and the clock readings at which each
    line of stderr appeared.
    """
    err = io.StringIO()
    task = start_api(clock, err, *argv, tty=tty)
    return await finish_api(clock, task, err, tty=tty, start=clock.monotonic())


def start_api(clock: FakeClock, err: io.StringIO, *argv: str, tty: bool) -> asyncio.Task[int]:
    args = _parser().parse_args(list(argv))
    return asyncio.ensure_future(_api(args, clock=clock, stderr=err, tty=tty))


async def finish_api(
    clock: FakeClock,
    task: asyncio.Task[int],
    err: io.StringIO,
    *,
    tty: bool,
    start: float,
) -> tuple[BaseException | None, str, list[float]]:
    """Drive ``task`` (started at ``start`` on the clock) to its end; see :func:`run_api`."""
    seen_at: list[float] = []
    while not task.done():
        # Asleep together: the command's retry backoff and, for its first 2 s, the note
        # (after that the note waits for a retry, not for the clock).
        sleepers = 2 if tty and clock.monotonic() < start + SLOW_NOTICE_AFTER else 1
        waiter = asyncio.ensure_future(clock.wait_for_sleepers(sleepers))
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        note_lines(err, seen_at, clock)  # a note printed meanwhile, e.g. when a retry began
        if waiter.done():
            clock.advance_to_next_deadline()
            await asyncio.sleep(0)  # let a woken note print before the next reading
        else:
            waiter.cancel()
        note_lines(err, seen_at, clock)
    return task.exception(), err.getvalue(), seen_at


def note_lines(err: io.StringIO, seen_at: list[float], clock: FakeClock) -> None:
    """Record the clock reading for each line that appeared on ``err`` since the last call."""
    while len(seen_at) < err.getvalue().count("\n"):
        seen_at.append(clock.monotonic())


async def test_on_a_terminal_a_note_says_it_is_still_retrying(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", "ak_test_k")
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_s")
    port = closed_port()
    start = clock.monotonic()
    error, err, seen_at = await run_api(
        clock, "me", "--base-url", f"http://127.0.0.1:{port}/v1", tty=True
    )
    assert err == (
        f"apimw-async: no answer from 127.0.0.1:{port} yet, {NOTE} "
        "(giving up in 8 s; Ctrl-C to stop)\n"
    )
    assert seen_at == [start + 2.0]  # once, after 2 s on the clock
    assert isinstance(error, TokenUnavailableError)
    assert f"127.0.0.1:{port}" in str(error)
    assert start + 2.0 < clock.monotonic() <= start + 10.0  # the default 10-s deadline ended it


async def test_no_note_when_not_a_terminal(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", "ak_test_k")
    monkeypatch.setenv("APIMW_API_SECRET", "sk_test_s")
    base = f"http://127.0.0.1:{closed_port()}/v1"
    error, err, _ = await run_api(clock, "me", "--base-url", base, "--timeout", "5", tty=False)
    assert err == ""
    assert isinstance(error, TokenUnavailableError)


async def test_no_note_once_the_server_answered(
    clock: FakeClock, fake: FakeAPIMW, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", fake.credentials.api_key)
    monkeypatch.setenv("APIMW_API_SECRET", fake.credentials.api_secret)
    # The token comes at once; then the listing is slow: 503s, retried with backoff on the clock.
    fake.faults.add("templates", status=503, times=2)
    error, err, _ = await run_api(
        clock, "templates", "--json", "--base-url", fake.base_url, tty=True
    )
    assert error is None
    assert err == ""
    assert fake.stats.calls["templates"] >= 3


@pytest.mark.apimw_clock(auto_advance=False)
async def test_a_note_while_an_api_call_is_being_retried(
    clock: FakeClock, fake: FakeAPIMW, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", fake.credentials.api_key)
    monkeypatch.setenv("APIMW_API_SECRET", fake.credentials.api_secret)
    # The token comes at once; the GET is answered 429 "retry after 3 s", then 200.
    fake.faults.add("me", status=429, retry_after=3)
    start = clock.monotonic()
    error, err, seen_at = await run_api(clock, "me", "--base-url", fake.base_url, tty=True)
    assert error is None
    assert err == (
        f"apimw-async: no successful answer from 127.0.0.1:{fake.port} yet (RateLimitError), "
        f"{NOTE} (retry 1 of 2; Ctrl-C to stop)\n"
    )
    assert seen_at == [start + 2.0]  # once, after 2 s, while the retry waited
    assert start + 3.0 <= clock.monotonic() <= start + 3.3  # the advised wait (+ jitter)
    assert fake.stats.calls["me"] == 2


@pytest.mark.apimw_clock(auto_advance=False)
async def test_the_note_comes_when_a_retry_starts_after_two_seconds(
    clock: FakeClock, fake: FakeAPIMW, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIMW_API_KEY", fake.credentials.api_key)
    monkeypatch.setenv("APIMW_API_SECRET", fake.credentials.api_secret)
    start = clock.monotonic()
    err = io.StringIO()
    fake.hold("me")
    task = start_api(clock, err, "me", "--base-url", fake.base_url, tty=True)
    await fake.wait_arrivals(1)  # the token came; the GET waits at the server
    clock.advance(SLOW_NOTICE_AFTER)  # only the note was asleep: 2 s without a retry
    for _ in range(5):
        await asyncio.sleep(0)  # the note wakes, finds no retry yet and says nothing
    assert err.getvalue() == ""
    # Now the GET is answered 503 again and again: retried (idempotent), then given up.
    fake.faults.add("me", status=503, times=3)
    fake.release("me")
    error, text, seen_at = await finish_api(clock, task, err, tty=True, start=start)
    assert isinstance(error, ServerError)
    assert text == (
        f"apimw-async: no successful answer from 127.0.0.1:{fake.port} yet (ServerError), "
        f"{NOTE} (retry 1 of 2; Ctrl-C to stop)\n"
    )
    assert seen_at == [start + 2.0]  # said when the first retry was decided, not before
    assert fake.stats.calls["me"] == 3


def test_one_note_and_one_error_line_on_a_terminal(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``main()``: a GET refused with 429 "retry after 3 s" until the CLI gives up.
    stderr is a terminal; the clock jumps whenever the command only waits on it."""
    monkeypatch.setattr(cli_module, "_isatty", lambda stream: True)
    monkeypatch.setattr(cli_module, "SYSTEM_CLOCK", FakeClock(auto_advance=True))
    served.call(lambda: served.fake.faults.add("me", status=429, retry_after=3, times=3))
    code, out, err = run(capsys, "me")
    assert (code, out) == (1, "")
    note, error = err.splitlines()
    assert NOTE in note
    assert error.startswith("apimw-async: RateLimitError: ")
    assert served.fake.stats.calls["me"] == 3
