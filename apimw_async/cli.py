"""The ``apimw-async`` command.

``apimw-async demo`` shows the token lifecycle under load against the bundled fake server;
``apimw-async fake-server`` runs that server on its own, for trying the SDK by hand. The API
commands (``token``, ``me``, ``send``, ``status``, ``templates``) read ``APIMW_API_KEY``,
``APIMW_API_SECRET`` and ``APIMW_BASE_URL`` from the environment; errors end them with exit
code 1 and one line on stderr: ``apimw-async: <ErrorType>: <message>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import enum
import json
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from ._errors import APIMWError
from ._version import __version__

__all__ = ["main"]


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
    parser = argparse.ArgumentParser(prog="apimw-async", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"apimw-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="token lifecycle under load against the fake server")
    demo.add_argument("--workers", type=int, default=200, help="concurrent workers (200)")
    demo.add_argument("--duration", type=_positive, default=10.0, help="seconds to run (10)")
    demo.add_argument(
        "--token-lifetime",
        type=_positive,
        default=3.0,
        help="expires_in of issued tokens, seconds (3)",
    )
    demo.add_argument(
        "--token-latency",
        type=float,
        default=0.05,
        help="latency of the token endpoints, seconds (0.05)",
    )
    demo.add_argument("--fail-500", type=_rate, default=0.0, help="rate of 500s on token calls")
    demo.add_argument("--fail-429", type=_rate, default=0.0, help="rate of 429s on token calls")
    demo.add_argument(
        "--drop", type=_rate, default=0.0, help="rate of dropped connections on token calls"
    )
    demo.add_argument("--seed", type=int, default=None, help="seed for the fault rates")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the result as JSON")

    token = sub.add_parser(
        "token",
        parents=[output],
        help="obtain an access token and describe it (type, lifetime, fingerprint)",
    )
    token.add_argument(
        "--show", action="store_true", help="also print the access token itself (a secret)"
    )
    sub.add_parser("me", parents=[output], help="the user, tenant and permissions of the key")
    send = sub.add_parser("send", parents=[output], help="send a WhatsApp text message")
    send.add_argument("--to", required=True, help="recipient in E.164, e.g. +1234567890")
    send.add_argument("--message", required=True, help="the text (at most 4096 characters)")
    send.add_argument("--preview-url", action="store_true", help="render link previews")
    status = sub.add_parser("status", parents=[output], help="a sent message's status")
    status.add_argument("message_id", help="the id a send returned (wamid....)")
    templates = sub.add_parser(
        "templates", parents=[output], help="list the message templates, every page"
    )
    templates.add_argument(
        "--status", type=str.upper, choices=("APPROVED", "PENDING", "REJECTED"), default=None
    )
    templates.add_argument("--category", default=None, help="e.g. TRANSACTIONAL, MARKETING")

    fake = sub.add_parser("fake-server", help="run the bundled fake APIMW server")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8080)
    fake.add_argument("--token-lifetime", type=_positive, default=3600.0)
    fake.add_argument("--token-latency", type=float, default=0.0)
    fake.add_argument(
        "--reuse-detection",
        action="store_true",
        help="a reused refresh token revokes its whole family",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``apimw-async`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "fake-server":
            return _fake_server(args)
        if args.command in _API_COMMANDS:
            return asyncio.run(_api(args))
    except APIMWError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the server said
        print(f"apimw-async: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # argparse allows only the commands above


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_table, progress_stream, run_demo

    if args.workers < 1:
        print("apimw-async: --workers must be at least 1", file=sys.stderr)
        return 2
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

    asyncio.run(serve())
    return 0


# --- API commands ----------------------------------------------------------------------------

_API_COMMANDS = frozenset({"token", "me", "send", "status", "templates"})


async def _api(args: argparse.Namespace) -> int:
    from ._client import Client

    async with Client.from_env() as client:
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
            sent = await client.whatsapp.send_text(
                args.to, args.message, preview_url=args.preview_url
            )
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
    return 0


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
