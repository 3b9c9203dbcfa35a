"""The ``apimw-async`` command.

``apimw-async demo`` shows the token lifecycle under load against the bundled fake server;
``apimw-async fake-server`` runs that server on its own, for trying the SDK by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

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
    except APIMWError as exc:
        print(f"apimw-async: {type(exc).__name__}: {exc}", file=sys.stderr)
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
