"""Malformed HTTP below the app, against a real `clipforge serve` on 127.0.0.1: uvicorn answers 400 (plain
text, before any route runs) and the server stays up and answers the next request on a new connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.service.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

MALFORMED = {
    "duplicate_content_length": b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    "bad_chunk_size": b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "raw_non_ascii_path": "GET /v1/items/\u00e9\u4e2d HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "garbage_request_line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
}


def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes on a new connection; what comes back until the server closes it (or 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


@pytest.fixture(scope="module")
def served(micro_bundle: Path):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "clipforge",
        "serve",
        "--bundle",
        str(micro_bundle),
        "--port",
        str(port),
        "--log-level",
        "critical",
        "--no-access-log",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else "exited"
        try:
            if exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
                b"HTTP/1.1 200"
            ):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.2)
    yield server, port
    server.terminate()
    server.wait(30)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http_is_a_4xx_and_the_server_answers_the_next_request(served, case):
    server, port = served
    reply = exchange(port, MALFORMED[case])
    status = reply.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 400 Bad Request", reply[:200]  # uvicorn's plain-text answer, not the app's JSON
    nxt = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert nxt.startswith(b"HTTP/1.1 200") and server.poll() is None, nxt[:200]
