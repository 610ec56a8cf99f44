"""The request-head deadline in a real uvicorn server, and the metric labels by route."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from despliegue.http.server import OTHER_PATHS, HeadDeadlineProtocol, RouteLabelledMetrics
from tests.conftest import free_port

DEADLINE_S = 0.5


class ShortDeadline(HeadDeadlineProtocol):
    head_timeout_s = DEADLINE_S


async def echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = Starlette(routes=[Route("/echo", echo_length, methods=["GET", "POST"])])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        http=ShortDeadline,
        lifespan="off",
        log_level="error",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield config.port
    server.should_exit = True
    thread.join(timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    with connect(port) as sock:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_an_unfinished_head_gets_408_and_a_closed_connection(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"request head not complete" in answer


def test_the_deadline_counts_from_the_first_byte_not_the_last(port: int) -> None:
    """Trickling one byte at a time kept the connection: each byte reset nothing here."""
    head = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 40 + b"\r\n\r\n"
    with connect(port) as sock:
        sent = 0
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(DEADLINE_S / 10)
        except OSError:  # closed by the server while sending
            pass
        answer = read_until_closed(sock)
    assert sent < len(head) and answer.startswith(b"HTTP/1.1 408")


def test_the_next_head_on_a_kept_alive_connection_has_its_own_deadline(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        first = b""
        while not first.endswith(b'{"received":0}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(DEADLINE_S * 2)  # idle between requests: the keep-alive timeout's business
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: ")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_a_slow_body_is_not_cut_by_the_head_deadline(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
        )
        for part in (b"ab", b"cd", b"ef"):
            time.sleep(DEADLINE_S)
            sock.sendall(part)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"received":6}')


def test_metric_labels_are_routes_prefixes_or_other() -> None:
    middleware = RouteLabelledMetrics(Starlette())
    middleware.paths = frozenset({"/models", "/metrics"})
    middleware.prefixes = ("/static_content/",)
    assert middleware.label("/models") == "/models"
    assert middleware.label("/static_content/swagger-ui.css") == "/static_content/"
    assert middleware.label("/wp-admin/setup.php") == OTHER_PATHS
    assert middleware.label("/models/../etc") == OTHER_PATHS


def test_a_request_the_parser_refuses_gets_the_product_error_body(port: int) -> None:
    """Ambiguous framing is refused by the HTTP parser itself, naming the header and the rule."""
    with connect(port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
        )
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["detail"][0]["loc"] == ["header", "transfer-encoding"]
