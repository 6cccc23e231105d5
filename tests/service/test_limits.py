"""Request bodies against a real uvicorn server over a raw socket: a chunked body without the token is refused
before it is read; one with the token is cut off at ``max_body_bytes``, not read whole."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlparse

from fastapi import FastAPI

from service.settings import Settings
from tests.service.conftest import TOKEN

CHUNK = b"x" * (256 * 1024)
BODY_MIB = 64


def send_chunked(url: str, headers: dict[str, str], mib: int = BODY_MIB) -> tuple[int, str]:
    """POST a ``mib`` MiB chunked body to /api/jobs until the server answers or closes;
    returns (bytes of body sent, the reply's status line)."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{head}\r\n".encode()
    )
    sent = 0
    try:
        while sent < mib * 1024 * 1024:
            sock.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
            sent += len(CHUNK)
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: the rest is never read
    try:
        reply = sock.recv(65536).decode(errors="replace")
    except ConnectionResetError:
        reply = ""
    sock.close()
    return sent, reply.partition("\r\n")[0]


def test_a_chunked_body_without_the_token_is_refused_before_it_is_read(
    settings: Settings, serve: Callable[[Settings], tuple[str, FastAPI]]
) -> None:
    url, _ = serve(settings)
    sent, status = send_chunked(url, {})
    assert sent < BODY_MIB * 1024 * 1024 // 4, f"sent {sent} bytes before the server stopped reading"
    assert status.startswith("HTTP/1.1 401 "), status


def test_a_chunked_body_with_the_token_is_cut_off_at_the_limit(
    settings: Settings, serve: Callable[[Settings], tuple[str, FastAPI]]
) -> None:
    url, _ = serve(settings)
    sent, status = send_chunked(url, {"Authorization": f"Bearer {TOKEN}"})
    assert sent < BODY_MIB * 1024 * 1024 // 4, f"sent {sent} bytes before the server stopped reading"
    assert status.startswith("HTTP/1.1 413 "), status
