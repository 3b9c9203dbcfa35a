"""The README's deployment recipe, deployed: ``uvicorn app:app --workers 2`` in a subprocess,
the app file being the README's block itself, with a real redis-server and the fake server.

(tests/test_readme.py runs the same block in-process with one worker; this is the multi-worker
claim: one token call, and one refresh, for the whole fleet.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from apimw_async.testing import FakeAPIMW

from .test_readme import BLOCKS, WAIT, free_port, wait_until_listening

pytest.importorskip("fastapi", minversion="0.112.2")
pytest.importorskip("uvicorn")

WORKERS = 2


def recipe() -> str:
    found = [b.code for b in BLOCKS if b.code.startswith("# app.py") and "--workers" not in b.code]
    assert len(found) == 1, "the README's deployment block (starting '# app.py') is gone"
    return found[0]


async def read_until(stream: asyncio.StreamReader, text: str, count: int, log: list[str]) -> None:
    """Read output lines until ``text`` has appeared ``count`` times (all lines go to ``log``)."""
    seen = sum(text in line for line in log)
    while seen < count:
        line = (await stream.readline()).decode(errors="replace")
        assert line, "uvicorn exited:\n" + "".join(log)
        log.append(line)
        seen += text in line


async def test_two_uvicorn_workers_share_one_token_through_redis(
    fake: FakeAPIMW, redis_url: str, tmp_path: Path
) -> None:
    from cryptography.fernet import Fernet

    (tmp_path / "app.py").write_text(recipe())
    port = free_port()
    env = {
        **os.environ,
        "APIMW_BASE_URL": fake.base_url,
        "APIMW_API_KEY": fake.credentials.api_key,
        "APIMW_API_SECRET": fake.credentials.api_secret,
        "REDIS_URL": redis_url,
        "TOKEN_KEY": Fernet.generate_key().decode(),
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1"),
        *("--port", str(port), "--workers", str(WORKERS)),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a failed test kills the workers too
    )
    assert proc.stdout is not None
    log: list[str] = []
    try:
        # Every worker ran the lifespan, which fetched a token: one called, the rest adopted.
        await asyncio.wait_for(
            read_until(proc.stdout, "Application startup complete", WORKERS, log), WAIT
        )
        assert fake.stats.token_calls == 1
        # A worker listens only after its startup: the log line comes a moment too early.
        await wait_until_listening(port, proc)

        async def me(session: aiohttp.ClientSession) -> None:
            async with session.get(f"http://127.0.0.1:{port}/me") as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert "@" in body["email"]

        # force_close: a new connection per request, so the kernel spreads them over workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(me(session) for _ in range(40)))
            assert fake.stats.token_calls == 1

            # Every token dies at once: whichever workers see the 401, one refresh serves all.
            fake.expire_access_tokens()
            await asyncio.gather(*(me(session) for _ in range(40)))
        assert fake.stats.token_calls == 1
        assert fake.stats.refresh_calls == 1
        assert fake.stats.refresh_reuse == 0

        # Shutdown: each worker closes its client, then its store (the lifespan's order).
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(
            read_until(proc.stdout, "Application shutdown complete", WORKERS, log), WAIT
        )
        rest, _ = await asyncio.wait_for(proc.communicate(), WAIT)
        output = "".join(log) + rest.decode(errors="replace")
        assert proc.returncode == 0, output
        assert "Traceback" not in output
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
