"""A loopback HTTP/1.1 server that answers with raw bytes, for answers no real framework would
send (broken status lines, bad headers, truncated or mis-encoded bodies).

``POST .../auth/token`` and ``.../auth/refresh`` answer a valid token pair unless a raw answer
is scripted for them; every other request gets the scripted bytes of its path (``None``:
close without answering). A scripted answer closes its connection; token answers keep it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from apimw_async import Credentials

__all__ = ["RawServer", "http_answer"]

ACCESS_TOKEN = "at_raw_SECRET_access_0123456789"
REFRESH_TOKEN = "rt_raw_SECRET_refresh_0123456789"
CREDENTIALS = Credentials("ak_test_raw0123456789", "sk_test_raw_SECRET_value_0123")


def http_answer(
    status: int = 200,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
) -> bytes:
    head = [f"HTTP/1.1 {status} X"]
    for name, value in (headers or {}).items():
        head.append(f"{name}: {value}")
    head.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def token_answer(access_token: str = ACCESS_TOKEN, **extra: Any) -> bytes:
    data = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": REFRESH_TOKEN,
        **extra,
    }
    return http_answer(200, json.dumps({"success": True, "data": data}).encode())


class RawServer:
    def __init__(self) -> None:
        self.answers: dict[str, bytes | None] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                path = target.split("?", 1)[0]
                self.requests.append((path, headers))
                if path in self.answers:
                    answer = self.answers[path]
                elif path.endswith(("/auth/token", "/auth/refresh")):
                    answer = token_answer()
                else:
                    answer = http_answer(404, b'{"success":false,"error":{"code":"NOT_FOUND"}}')
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if path in self.answers:
                    break  # a scripted answer ends its connection (a truncated body must)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
