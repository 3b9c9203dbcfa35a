"""Every ```python block of README.md runs here, as a user would run it.

The convention, for whoever edits the README:

* Every fenced block whose language is ``python`` (or ``py``) runs against the bundled fake
  server, with ``APIMW_BASE_URL``, ``APIMW_API_KEY`` and ``APIMW_API_SECRET`` set by the pytest
  plugin's ``apimw_env`` and ``APIMW_WEBHOOK_SECRET`` set too. There is no way to leave a block
  out: ``test_every_python_block_is_collected`` counts the fences, and a block that cannot run
  fails its test.
* Write whole programs, imports included. A block that uses ``await`` / ``async with`` / ``async
  for`` at top level runs as if typed into ``python -m asyncio`` (in an event loop of its own);
  any other block runs as a script (``asyncio.run(main())`` works). ``...`` placeholders are
  fine.
* A block that needs more says so in an HTML comment on the line just before its fence (blank
  lines between are not allowed), with space-separated ``key=value`` items::

      <!-- readme-test: kind=asgi requires=redis,fastapi http=POST:/notify/+14155550123 -->

  ``kind=`` how the block runs:
    ``script`` (the default) as above;
    ``pytest``: the block is a test file, run by a separate pytest process with
    ``-p apimw_async.pytest_plugin -o asyncio_mode=strict -W error``; all its tests must pass;
    ``conftest``: the block is a ``conftest.py``, run (without ``-p``) with a test that uses
    ``apimw_client``;
    ``server``: a program that serves HTTP on ``$PORT`` until interrupted (``web.run_app``); it
    runs in a subprocess, must accept connections, answer the ``http``/``deliver`` checks,
    and stop cleanly on SIGINT;
    ``asgi``: a module defining ``app``; it is served by uvicorn (lifespan included) in the
    test's event loop, then checked with ``http``/``deliver``.
  ``prelude=NAME[,NAME]``: code from :data:`PRELUDES` below runs first, for fragments that use
  a name defined elsewhere (``credentials``; ``my_service``, "your code" in the plugin
  example). Keep preludes few and obvious.
  ``requires=redis``: ``REDIS_URL`` (the suite's redis-server) and ``TOKEN_KEY`` (a fresh
  Fernet key) are set; ``requires=redis-cluster``: ``REDIS_CLUSTER_URL`` (the suite's Redis
  Cluster, fixture ``redis_cluster_url``) is set; ``requires=fastapi``: FastAPI and uvicorn
  must be importable.
  ``http=METHOD:PATH[,METHOD:PATH]``: requests the served app must answer with a 2xx.
  ``deliver=PATH``: a signed ``message.delivered`` webhook (``$APIMW_WEBHOOK_SECRET``) POSTed
  there must get 200.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apimw_async.testing import FakeAPIMW
from apimw_async.webhooks import SIGNATURE_HEADER, sign

README = Path(__file__).resolve().parents[1] / "README.md"
WEBHOOK_SECRET = "whsec_readme_test_secret"
#: Only a guard against a hung block; every wait below ends on an event or a condition.
WAIT = 60.0

PRELUDES: dict[str, str] = {
    # "Client(credentials, ...)" fragments.
    "credentials": "from apimw_async import Credentials\ncredentials = Credentials.from_env()\n",
    # The plugin example's "your code".
    "my_service": "async def my_service(client):\n    await client.auth.me()\n",
}
KINDS = {"script", "pytest", "conftest", "server", "asgi"}
REQUIREMENTS = {"redis", "redis-cluster", "fastapi"}
DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:(?P<items>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
PYTHON = {"python", "py", "python3"}


@dataclass(frozen=True)
class Block:
    line: int  # of the first code line, 1-based
    heading: str
    code: str
    kind: str = "script"
    preludes: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    http: tuple[str, ...] = ()
    deliver: str | None = None
    errors: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"L{self.line}-{slug or 'top'}"


def parse_directive(text: str) -> tuple[dict[str, Any], list[str]]:
    options: dict[str, Any] = {}
    errors: list[str] = []
    for item in text.split():
        key, sep, value = item.partition("=")
        values = tuple(v for v in value.split(",") if v)
        if not sep or not values:
            errors.append(f"malformed directive item {item!r} (want key=value)")
        elif key == "kind" and value in KINDS:
            options["kind"] = value
        elif key == "prelude" and all(v in PRELUDES for v in values):
            options["preludes"] = values
        elif key == "requires" and all(v in REQUIREMENTS for v in values):
            options["requires"] = values
        elif key == "http" and all(re.fullmatch(r"[A-Z]+:/\S*", v) for v in values):
            options["http"] = values
        elif key == "deliver" and value.startswith("/"):
            options["deliver"] = value
        else:
            errors.append(f"unknown directive item {item!r}")
    return options, errors


def extract_blocks(text: str) -> list[Block]:
    """Every python-fenced block, with the directive of the line before it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        opened = FENCE.match(line)
        if not opened:
            i += 1
            continue
        fence, indent = opened["fence"], len(opened["indent"])
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[0] * len(fence)):
            end += 1
        if opened["info"].lower() in PYTHON:
            code = textwrap.dedent("\n".join(ln[indent:] for ln in lines[i + 1 : end])) + "\n"
            options: dict[str, Any] = {}
            errors: list[str] = []
            previous = lines[i - 1] if i > 0 else ""
            directive = DIRECTIVE.match(previous)
            if directive:
                options, errors = parse_directive(directive["items"])
            elif "readme-test" in previous:
                errors.append(f"unreadable directive {previous.strip()!r}")
            blocks.append(Block(i + 2, heading, code, errors=tuple(errors), **options))
        i = end + 1
    return blocks


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = extract_blocks(README_TEXT)


# --- the blocks are all there --------------------------------------------------------------


def test_every_python_block_is_collected() -> None:
    # Counted independently of the parser: any fence whose info string mentions Python.
    fences = re.findall(r"^\s*(?:```|~~~)\s*\{?\.?(py\w*)", README_TEXT, re.M | re.I)
    assert len(fences) == len(BLOCKS), (
        f"README.md has {len(fences)} python fences ({fences}) but {len(BLOCKS)} blocks were "
        "extracted: write them as ```python"
    )
    assert len(BLOCKS) >= 9  # the README's examples did not silently vanish
    assert len({block.id for block in BLOCKS}) == len(BLOCKS)


def test_directives_are_attached_to_blocks() -> None:
    # A directive not followed by a python fence would silently configure nothing.
    lines = README_TEXT.splitlines()
    for number, line in enumerate(lines):
        if line.lstrip().startswith("<!--") and "readme-test" in line:
            following = lines[number + 1] if number + 1 < len(lines) else ""
            assert FENCE.match(following), f"README.md:{number + 1}: directive without a block"


def test_the_parser_reads_directives() -> None:
    text = (
        "# Title\n<!-- readme-test: kind=asgi requires=redis,fastapi http=GET:/a,POST:/b -->\n"
        "```python\napp = None\n```\n\n<!-- readme-test: kind=nope bogus -->\n```py\npass\n```\n"
        "```sh\nls\n```\n"
    )
    first, second = extract_blocks(text)
    assert (first.kind, first.requires, first.http) == (
        "asgi",
        ("redis", "fastapi"),
        ("GET:/a", "POST:/b"),
    )
    assert first.line == 4
    assert first.code == "app = None\n"
    assert len(second.errors) == 2


# --- running them -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def source_of(block: Block) -> str:
    """The preludes, then the block, padded so tracebacks show README.md's line numbers."""
    prelude = "".join(PRELUDES[name] for name in block.preludes)
    padding = max(0, block.line - 1 - prelude.count("\n"))
    return prelude + "\n" * padding + block.code


def run_script(block: Block) -> None:
    """Run a block as a script, or (top-level await) as typed into ``python -m asyncio``."""
    code = compile(source_of(block), str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    # Running the README's own code is the point of this file.
    if code.co_flags & inspect.CO_COROUTINE:  # the block awaits at top level
        asyncio.run(eval(code, namespace))  # noqa: S307
    else:
        exec(code, namespace)  # noqa: S102


def delivery(secret: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "type": "message.delivered",
            "id": "evt_readme_1",
            "created_at": "2026-01-01T00:00:00Z",
            "data": {"message_id": "wamid.README", "status": "delivered", "to": "+14155550123"},
        }
    ).encode()
    return body, {SIGNATURE_HEADER: sign(secret, body), "Content-Type": "application/json"}


async def check_http(base: str, block: Block) -> None:
    async with aiohttp.ClientSession() as session:
        for check in block.http:
            method, _, path = check.partition(":")
            async with session.request(method, base + path) as resp:
                text = await resp.text()
                assert 200 <= resp.status < 300, f"{check}: {resp.status} {text}"
        if block.deliver is not None:
            body, headers = delivery(WEBHOOK_SECRET)
            async with session.post(base + block.deliver, data=body, headers=headers) as resp:
                assert resp.status == 200, f"delivery to {block.deliver}: {resp.status}"


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:  # uvicorn has no event for it; startup ends or fails
            assert not task.done(), "uvicorn stopped during startup (see the log above)"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)


async def wait_until_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    """Return once ``port`` accepts connections (servers log nothing reliable when it does)."""
    deadline = time.monotonic() + WAIT
    while True:
        assert proc.returncode is None, "the server exited before it listened"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listened on port {port}"
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def run_server(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "server_block.py"
    script.write_text(source_of(block))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        str(script),
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_until_listening(port, proc)
        await check_http(f"http://127.0.0.1:{port}", block)
        proc.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, output.decode(errors="replace")
        if block.deliver is not None:
            assert b"wamid.README" in output  # the handler saw the delivery
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def pytest_args(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        *args,
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error",
        "-p",
        "no:cacheprovider",
        "-q",
        timeout=WAIT,
    )


def count_tests(code: str) -> int:
    tree = ast.parse(code)
    return sum(
        isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name.startswith("test")
        for node in tree.body
    )


@pytest.fixture
def readme_env(apimw_env: FakeAPIMW, monkeypatch: pytest.MonkeyPatch) -> FakeAPIMW:
    monkeypatch.setenv("APIMW_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return apimw_env


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
async def test_readme_block(
    block: Block,
    readme_env: FakeAPIMW,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert not block.errors, f"README.md:{block.line - 1}: {'; '.join(block.errors)}"
    if "redis" in block.requires:
        from cryptography.fernet import Fernet

        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))
        monkeypatch.setenv("TOKEN_KEY", Fernet.generate_key().decode())
    if "redis-cluster" in block.requires:
        monkeypatch.setenv("REDIS_CLUSTER_URL", request.getfixturevalue("redis_cluster_url"))
    if "fastapi" in block.requires or block.kind == "asgi":
        pytest.importorskip("fastapi", minversion="0.112.2")
        pytest.importorskip("uvicorn")

    if block.kind == "script":
        # Its own thread and event loop: the fake server keeps serving on this one.
        await asyncio.wait_for(asyncio.to_thread(run_script, block), WAIT)
    elif block.kind == "pytest":
        pytester: pytest.Pytester = request.getfixturevalue("pytester")
        pytester.makepyfile(test_readme_block=source_of(block))
        result = await asyncio.to_thread(pytest_args, pytester, "-p", "apimw_async.pytest_plugin")
        result.assert_outcomes(passed=count_tests(block.code))
    elif block.kind == "conftest":
        pytester = request.getfixturevalue("pytester")
        pytester.makeconftest(source_of(block))
        pytester.makepyfile(
            test_uses_the_conftest="import pytest\n\n@pytest.mark.asyncio\n"
            "async def test_it(apimw_client):\n    assert (await apimw_client.auth.me()).user\n"
        )
        result = await asyncio.to_thread(pytest_args, pytester)
        result.assert_outcomes(passed=1)
    elif block.kind == "server":
        await run_server(block, tmp_path)
    else:  # asgi
        namespace: dict[str, Any] = {"__name__": "readme_app"}
        exec(compile(source_of(block), str(README), "exec"), namespace)  # noqa: S102
        async with serve_asgi(namespace["app"]) as base:
            await check_http(base, block)


def test_a_broken_block_fails_its_test() -> None:
    # What a README edit that breaks an example does: the block's test raises.
    broken = extract_blocks("# Broken\n```python\nfrom apimw_async import Clinet\n```\n")
    with pytest.raises(ImportError, match="Clinet"):
        run_script(broken[0])
    awaiting = extract_blocks("```python\nimport asyncio\nawait asyncio.sleep(0)\nx = 1 / 0\n```\n")
    with pytest.raises(ZeroDivisionError):
        run_script(awaiting[0])
