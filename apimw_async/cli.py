"""The ``apimw-async`` command.

``apimw-async demo`` shows the token lifecycle under load against the bundled fake server;
``apimw-async fake-server`` runs that server on its own, for trying the SDK by hand. The API
commands (``token``, ``me``, ``send``, ``status``, ``templates``) read ``APIMW_API_KEY``,
``APIMW_API_SECRET`` and ``APIMW_BASE_URL`` from the environment (``--base-url`` overrides the
last).

Behaviour a script can rely on: an error ends a command with exit code 1 and exactly one line on
stderr, ``apimw-async: <ErrorType>: <message>``; a usage error exits 2, Ctrl-C 130. Output cut
short by a closed pipe (``apimw-async templates | head -3``) ends quietly with exit code 141
(128 + SIGPIPE, what a shell reports for a command killed by a closed pipe, so ``set -o
pipefail`` still sees that the output was not all read). The SDK's log records are not printed
unless ``--verbose`` is given. On a terminal, a command still retrying after 2 s (waiting for
its first token, or repeating an API call the server failed) says so once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import enum
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import attrs
from yarl import URL

from ._clock import SYSTEM_CLOCK, Clock
from ._config import DEFAULT_BASE_URL, DEFAULT_TOKEN_DEADLINE, ENV_BASE_URL, LOGGER_NAME
from ._errors import APIMWError
from ._retry import RetryPolicy
from ._urls import normalize_base_url
from ._version import __version__

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["main"]

#: Exit codes (besides 0): an API or configuration error, a usage error, Ctrl-C, a closed pipe.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: After this long still retrying, a terminal user is told so.
SLOW_NOTICE_AFTER = 2.0

_DESCRIPTION = "Try the APIMW WhatsApp API from the shell, or run the bundled fake server."
_EPILOG = f"""\
environment:
  APIMW_API_KEY, APIMW_API_SECRET  credentials of the API commands
  APIMW_BASE_URL                   API base URL (default {DEFAULT_BASE_URL})

exit codes:
  0 success, {EXIT_ERROR} API or configuration error (one line on stderr), {EXIT_USAGE} usage \
error,
  {EXIT_INTERRUPTED} interrupted (Ctrl-C), {EXIT_BROKEN_PIPE} output cut short by a closed pipe

Try it without an account: run `apimw-async fake-server` in one shell, export the
three variables it prints in another, then `apimw-async me`."""


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a rate is between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apimw-async",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"apimw-async {__version__}",
        help="print the version",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (COMMAND --help: its options)",
    )

    demo = sub.add_parser(
        "demo",
        help="token lifecycle under load against the fake server",
        description="Run many workers against the bundled fake server while tokens expire, "
        "and report the token calls, latencies and errors.",
    )
    demo.add_argument(
        "--workers", metavar="N", type=int, default=200, help="concurrent workers (200)"
    )
    demo.add_argument(
        "--duration", metavar="SECONDS", type=_positive, default=10.0, help="seconds to run (10)"
    )
    demo.add_argument(
        "--token-lifetime",
        metavar="SECONDS",
        type=_positive,
        default=3.0,
        help="expires_in of issued tokens, seconds (3)",
    )
    demo.add_argument(
        "--token-latency",
        metavar="SECONDS",
        type=float,
        default=0.05,
        help="latency of the token endpoints, seconds (0.05)",
    )
    demo.add_argument(
        "--fail-500", metavar="RATE", type=_rate, default=0.0, help="rate of 500s on token calls"
    )
    demo.add_argument(
        "--fail-429", metavar="RATE", type=_rate, default=0.0, help="rate of 429s on token calls"
    )
    demo.add_argument(
        "--drop",
        metavar="RATE",
        type=_rate,
        default=0.0,
        help="rate of dropped connections on token calls",
    )
    demo.add_argument(
        "--seed", metavar="N", type=int, default=None, help="seed for the fault rates"
    )
    demo.add_argument("--json", action="store_true", help="print the result as JSON")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help=f"API base URL (default: $APIMW_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    common.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept a plain-http base URL on a non-loopback host (never in production)",
    )
    common.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TOKEN_DEADLINE,
        metavar="SECONDS",
        help=f"give up after retrying this long without an answer ({DEFAULT_TOKEN_DEADLINE:g})",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log the SDK's token and retry events to stderr",
    )

    token = sub.add_parser(
        "token",
        parents=[common],
        help="obtain an access token and describe it (type, lifetime, fingerprint)",
        description="Obtain an access token and describe it; the token itself is printed "
        "only with --show.",
    )
    token.add_argument(
        "--show", action="store_true", help="also print the access token itself (a secret)"
    )
    sub.add_parser(
        "me",
        parents=[common],
        help="the user, tenant and permissions of the key",
        description="Show the user, tenant and permissions of the API key (GET /auth/me).",
    )
    send = sub.add_parser(
        "send",
        parents=[common],
        help="send a WhatsApp text message",
        description="Send a WhatsApp text message; prints its id and status.",
    )
    send.add_argument("--to", required=True, help="recipient in E.164, e.g. +1234567890")
    send.add_argument("--message", required=True, help="the text (at most 4096 characters)")
    send.add_argument("--preview-url", action="store_true", help="render link previews")
    status = sub.add_parser(
        "status",
        parents=[common],
        help="a sent message's status",
        description="Show the status of a sent message (sent, delivered, read or failed).",
    )
    status.add_argument("message_id", help="the id a send returned (wamid....)")
    templates = sub.add_parser(
        "templates",
        parents=[common],
        help="list the message templates, every page",
        description="List the message templates, every page, optionally filtered.",
    )
    templates.add_argument(
        "--status",
        type=str.upper,
        choices=("APPROVED", "PENDING", "REJECTED"),
        default=None,
        help="only templates with this status (any case)",
    )
    templates.add_argument("--category", default=None, help="e.g. TRANSACTIONAL, MARKETING")

    fake = sub.add_parser(
        "fake-server",
        help="run the bundled fake APIMW server",
        description="Run the bundled fake APIMW server until Ctrl-C, and print the "
        "environment variables that point the SDK and the API commands at it.",
    )
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    fake.add_argument(
        "--port", metavar="PORT", type=int, default=8080, help="TCP port, 0 for a free one (8080)"
    )
    fake.add_argument(
        "--token-lifetime",
        metavar="SECONDS",
        type=_positive,
        default=3600.0,
        help="expires_in of issued tokens, seconds (3600)",
    )
    fake.add_argument(
        "--token-latency",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="extra delay of the token endpoints, seconds (0)",
    )
    fake.add_argument(
        "--reuse-detection",
        action="store_true",
        help="a reused refresh token revokes its whole family",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``apimw-async`` console script; returns the exit code."""
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here (after --help's SystemExit too), so that a reader that went away
            # is noticed now and not in the interpreter's flush at exit, which would print
            # "Exception ignored ... BrokenPipeError".
            sys.stdout.flush()
    except BrokenPipeError:
        return _broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "fake-server":
            return _fake_server(args)
        if args.command in _API_COMMANDS:
            with _logging(verbose=args.verbose):
                return asyncio.run(
                    _api(args, clock=SYSTEM_CLOCK, stderr=sys.stderr, tty=_isatty(sys.stderr))
                )
    except APIMWError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    raise AssertionError(args.command)  # argparse allows only the commands above


def _fail(message: str) -> None:
    # One line, whatever the server said.
    print(f"apimw-async: {' '.join(message.split())}", file=sys.stderr)


def _broken_pipe() -> int:
    # The reader went away (``| head``): nothing more can be shown, so no traceback either.
    # Python's recipe: point stdout at devnull so the flush at exit cannot fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured, replaced)
        pass
    return EXIT_BROKEN_PIPE


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


@contextmanager
def _logging(*, verbose: bool) -> Iterator[None]:
    """``--verbose``: the SDK's records (INFO and up) on stderr, for this command only."""
    if not verbose:
        yield
        return
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("apimw-async: %(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_table, progress_stream, run_demo

    if args.workers < 1:
        _fail("--workers must be at least 1")
        return EXIT_USAGE
    config = DemoConfig(
        workers=args.workers,
        duration=args.duration,
        token_lifetime=args.token_lifetime,
        token_latency=max(0.0, args.token_latency),
        fail_500=args.fail_500,
        fail_429=args.fail_429,
        drop=args.drop,
        seed=args.seed,
    )
    result = asyncio.run(run_demo(config, progress=None if args.json else progress_stream()))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        print(format_table(result))
    return 0


def _fake_server(args: argparse.Namespace) -> int:
    from .testing import FakeAPIMW

    async def serve() -> None:
        async with FakeAPIMW(
            host=args.host,
            port=args.port,
            token_lifetime=args.token_lifetime,
            token_latency=max(0.0, args.token_latency),
            reuse_detection=args.reuse_detection,
        ) as fake:
            creds = fake.credentials
            print(f"fake APIMW server on {fake.base_url}", flush=True)
            print(f"  export APIMW_BASE_URL={fake.base_url}", flush=True)
            print(f"  export APIMW_API_KEY={creds.api_key}", flush=True)
            # The fake server's secret is a public test value, printed so it can be exported.
            print(f"  export APIMW_API_SECRET={creds.api_secret}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except OSError as exc:  # e.g. the port is taken
        _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_ERROR
    return 0


# --- API commands ----------------------------------------------------------------------------

_API_COMMANDS = frozenset({"token", "me", "send", "status", "templates"})


def _base_url(args: argparse.Namespace) -> str:
    """The base URL to use, checked as the Client would, but naming the CLI's flag."""
    base_url = args.base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    return normalize_base_url(
        base_url,
        allow_insecure_http=args.allow_insecure_http,
        insecure_hint="pass --allow-insecure-http",
    )


def _host(base_url: str) -> str:
    url = URL(base_url)
    host = url.raw_host or ""
    return f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"


@attrs.frozen
class _ReportedRetries(RetryPolicy):
    """A :class:`RetryPolicy` that also reports each retry it grants to ``on_retry``: the
    error, the retry's number and the most allowed (the terminal note listens)."""

    on_retry: Callable[[BaseException, int, int], None] = attrs.field(
        kw_only=True, eq=False, repr=False
    )

    def next_delay(
        self,
        error: BaseException,
        *,
        attempt: int,
        waited: float,
        idempotent: bool,
        now: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        delay = super().next_delay(
            error, attempt=attempt, waited=waited, idempotent=idempotent, now=now, rng=rng
        )
        if delay is not None:
            self.on_retry(error, attempt + 1, self.max_attempts - 1)
        return delay


class _Retries:
    """The latest retry of an API call of this command (set by :class:`_ReportedRetries`)."""

    def __init__(self) -> None:
        self.seen = asyncio.Event()
        self.latest = ("", 0, 0)

    def __call__(self, error: BaseException, number: int, most: int) -> None:
        self.latest = (type(error).__name__, number, most)
        self.seen.set()


async def _api(args: argparse.Namespace, *, clock: Clock, stderr: TextIO, tty: bool) -> int:
    """Run one API command; ``clock`` and ``tty`` (is stderr a terminal) are injectable."""
    from ._client import Client

    base_url = _base_url(args)
    retries = _Retries()
    async with Client.from_env(
        base_url=base_url,
        allow_insecure_http=args.allow_insecure_http,
        clock=clock,
        timeout=args.timeout,
        retry_policy=_ReportedRetries(max_wait=args.timeout, on_retry=retries),
        deadline=args.timeout,
    ) as client:
        notice = (
            asyncio.ensure_future(
                _slow_notice(client, clock, stderr, _host(base_url), args, retries)
            )
            if tty
            else None
        )
        try:
            await _command(client, args)
        finally:
            if notice is not None:
                notice.cancel()
                await asyncio.gather(notice, return_exceptions=True)
    return 0


async def _slow_notice(
    client: Client,
    clock: Clock,
    stderr: TextIO,
    host: str,
    args: argparse.Namespace,
    retries: _Retries,
) -> None:
    """Tell a terminal user, once, that the command is still retrying: after 2 s if it is
    still waiting for its first token, else as soon as (after 2 s) an API call is retried."""
    await clock.sleep(SLOW_NOTICE_AFTER)
    if client.tokens.stats.tokens_obtained == 0:
        left = max(0.0, args.timeout - SLOW_NOTICE_AFTER)
        note = f"no answer from {host} yet, still retrying (giving up in {left:.0f} s"
    else:
        # Cancelled with the command if no retry comes.
        await retries.seen.wait()
        error, number, most = retries.latest
        note = (
            f"no successful answer from {host} yet ({error}), still retrying "
            f"(retry {number} of {most}"
        )
    print(f"apimw-async: {note}; Ctrl-C to stop)", file=stderr, flush=True)


async def _command(client: Client, args: argparse.Namespace) -> None:
    if args.command == "token":
        token = await client.tokens.get_token()
        fields: dict[str, Any] = {
            "token_type": token.token_type,
            "expires_in": token.expires_in if args.json else f"{token.expires_in:g} s",
            "fingerprint": token.fingerprint,
        }
        if args.show:
            fields["access_token"] = token.access_token
        _emit(args, fields)
    elif args.command == "me":
        me = await client.auth.me()
        if args.json:
            _emit(args, me)
        else:
            user, tenant = me.user, me.tenant
            _emit(
                args,
                {
                    "user": _described(user.id, user.email, user.name),
                    "tenant": _described(tenant.id, tenant.name, tenant.plan, tenant.status),
                    "permissions": ", ".join(me.permissions) or "-",
                },
            )
    elif args.command == "send":
        sent = await client.whatsapp.send_text(args.to, args.message, preview_url=args.preview_url)
        _emit(args, sent)
    elif args.command == "status":
        _emit(args, await client.whatsapp.get_status(args.message_id))
    else:
        found = [
            t
            async for t in client.whatsapp.list_templates(
                status=args.status, category=args.category
            )
        ]
        if args.json:
            _emit(args, found)
        else:
            rows = [(t.name, t.language or "-", t.raw_status, t.category or "-") for t in found]
            _table(("NAME", "LANGUAGE", "STATUS", "CATEGORY"), rows)


def _described(first: str, *details: str | None) -> str:
    extra = ", ".join(d for d in details if d)
    return f"{first} ({extra})" if extra else first


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data: attrs results as objects, datetimes as ISO-8601 ``Z``."""
    if attrs.has(type(value)):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if f.repr is not False  # secrets (e.g. a webhook's) stay out, as in repr
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _emit(args: argparse.Namespace, value: Any) -> None:
    data = _plain(value)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
        return
    width = max(len(k) for k in data) if data else 0
    for key, item in data.items():
        shown = "-" if item is None else item
        if isinstance(item, list):
            shown = ", ".join(str(i) for i in item) or "-"
        print(f"{key:<{width}}  {shown}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
