"""Hostile HTTP on the shared live server: framing, slow heads, paths, content types, forms, metric
labels, WebSocket handshakes. Raw sockets send bytes no client library would."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from despliegue.config import settings
from tests.conftest import LiveServer
from tests.image_samples import encode, photo

pytestmark = pytest.mark.integration

HEAT_BODY = json.dumps({"sediment_thickness_m": [100.0]}).encode()
JSON_ROUTES = ["/heatflow", "/falsetrue", "/flowers", "/face", "/super", "/antibiotics"]
UPLOAD_ROUTES = {
    "/flowers/upload": "images",
    "/face/upload": "input_data",
    "/super/upload": "input_data",
}


def connect(server: LiveServer, timeout: float) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket.timeout if it never does)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(server: LiveServer, request: bytes, timeout: float = 60) -> tuple[int, dict]:
    """Send `request` (with `Connection: close`) as is; the answer's status and JSON body."""
    with connect(server, timeout) as sock:
        sock.sendall(request)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"raw": body.decode("latin-1")}


def request_head(server: LiveServer, path: str, *headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: localhost",
        f"Authorization: Bearer {server.token}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def refused_header(response_body: dict) -> list:
    return response_body["detail"][0]["loc"]


def test_content_length_with_a_chunked_body_is_refused(live_server: LiveServer) -> None:
    """The guard trusted `Content-Length: 1` while the server read the chunked body: the size
    limit was bypassed (268 MB accepted)."""
    chunked = f"{len(HEAT_BODY):x}\r\n".encode() + HEAT_BODY + b"\r\n0\r\n\r\n"
    head = request_head(
        live_server,
        "/heatflow",
        "Content-Type: application/json",
        "Content-Length: 1",
        "Transfer-Encoding: chunked",
    )
    status, body = raw_exchange(live_server, head + chunked)
    assert status == 400, body
    assert refused_header(body) == ["header", "transfer-encoding"]


def test_conflicting_content_lengths_are_refused(live_server: LiveServer) -> None:
    """(The HTTP server refuses these itself; identical repeats it reads as one.)"""
    head = request_head(
        live_server,
        "/heatflow",
        "Content-Type: application/json",
        "Content-Length: 1",
        f"Content-Length: {len(HEAT_BODY)}",
    )
    status, body = raw_exchange(live_server, head + HEAT_BODY)
    assert status == 400, body


def test_an_unfinished_request_head_gets_408_and_the_connection_closes(
    live_server: LiveServer,
) -> None:
    """A client that trickles its headers held a connection open for as long as it liked."""
    deadline = settings().limits.request_head_timeout_s
    with connect(live_server, timeout=deadline * 6) as sock:
        sock.sendall(b"POST /heatflow HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        answer = read_until_closed(sock)  # socket.timeout here: the server never closed it
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def endpoint_labels(server: LiveServer) -> set[str]:
    return set(re.findall(r'endpoint="([^"]*)"', server.get("/metrics").text))


def test_a_line_break_after_a_route_does_not_pass_its_guards(live_server: LiveServer) -> None:
    """Python's `$` matches before a final line break, so `/heatflow%0A` used to reach the
    /heatflow API while the guards keyed on the exact path (here: its content type) let it by."""
    body = '{"sediment_thickness_m": [10.0]}'
    plain = {"content-type": "text/plain"}
    assert live_server.post("/heatflow", body, headers=plain).status_code == 415
    response = live_server.post("/heatflow%0A", body, headers=plain)
    assert response.status_code == 404, response.text
    assert response.json()["detail"][0]["loc"] == ["path"]


def test_random_paths_do_not_become_metric_labels(live_server: LiveServer) -> None:
    """Every path (401s included) was a new Prometheus label: /metrics grew without end."""
    before = endpoint_labels(live_server)
    marker = uuid.uuid4().hex[:12]
    with httpx.Client(base_url=live_server.url, timeout=60) as anonymous:
        for number in range(10):
            assert anonymous.get(f"/scan-{marker}-{number}").status_code == 401
            assert anonymous.post(f"/heatflow/{marker}/{number}").status_code == 401
            assert live_server.get(f"/{marker}/{number}").status_code == 404
    after = endpoint_labels(live_server)
    assert not [label for label in after if marker in label]
    assert after - before <= {"other"}
    assert "/heatflow" in after and "/metrics" not in after


def test_text_plain_is_refused_on_json_endpoints(live_server: LiveServer) -> None:
    """BentoML parses any type it does not know as JSON: text/plain was answered 200."""
    valid = {"/heatflow": HEAT_BODY.decode(), "/falsetrue": json.dumps({"texts": ["Hola."]})}
    for path in JSON_ROUTES:
        body = valid.get(path, "{}")
        response = live_server.post(path, body, headers={"content-type": "text/plain"})
        assert response.status_code == 415, (path, response.text)
        assert refused_header(response.json()) == ["header", "content-type"]
        assert "application/json" in response.json()["error"]


@pytest.mark.parametrize("order", ["json-first", "form-first"])
def test_a_repeated_content_type_is_refused(live_server: LiveServer, order: str) -> None:
    """The guards read the last Content-Type and BentoML the first: 500s, and a form body
    accepted on a JSON endpoint."""
    types = ["application/json", "application/x-www-form-urlencoded"]
    if order == "form-first":
        types.reverse()
    body = "sediment_thickness_m=%5B100%5D" if order == "form-first" else HEAT_BODY
    headers = [*live_server.headers.items(), *(("content-type", t) for t in types)]
    response = httpx.post(f"{live_server.url}/heatflow", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert refused_header(response.json()) == ["header", "content-type"]

    multipart = httpx.Request(
        "POST", "http://x/", files=[("images", ("a.jpg", encode(photo("coffee"), "JPEG")))]
    )
    form_type = multipart.headers["content-type"]
    types = (
        [form_type, "application/json"]
        if order == "form-first"
        else ["application/json", form_type]
    )
    headers = [*live_server.headers.items(), *(("content-type", t) for t in types)]
    response = httpx.post(
        f"{live_server.url}/flowers/upload", content=multipart.read(), headers=headers
    )
    assert response.status_code == 400, response.text
    assert refused_header(response.json()) == ["header", "content-type"]


@pytest.mark.parametrize(("path", "field"), UPLOAD_ROUTES.items())
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "application/json", "text/plain"]
)
def test_upload_endpoints_take_only_multipart(
    live_server: LiveServer, path: str, field: str, content_type: str
) -> None:
    """A urlencoded form was a 500 (BentoML reads its text values as URLs to download); a JSON
    or text body naming a URL was downloaded too."""
    url = f"{live_server.url}/models"
    body = {
        "application/x-www-form-urlencoded": f"{field}={url}",
        "application/json": json.dumps({field: [url] if field == "images" else url}),
        "text/plain": url,
    }[content_type]
    response = live_server.post(path, body, headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    assert refused_header(response.json()) == ["header", "content-type"]
    assert "multipart/form-data" in response.json()["error"]


def jpeg_file(name: str) -> tuple[str, bytes, str]:
    return (f"{name}.jpg", encode(photo(name), "JPEG"), "image/jpeg")


@pytest.mark.parametrize("path", ["/face/upload", "/super/upload"])
def test_a_second_file_on_a_one_file_field_is_refused(live_server: LiveServer, path: str) -> None:
    """The second file was dropped silently: the answer covered one image of two."""
    files = [("input_data", jpeg_file("astronaut")), ("input_data", jpeg_file("coffee"))]
    response = live_server.upload(path, files)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["input_data"] and "one file" in detail["msg"]


@pytest.mark.parametrize(("path", "field"), UPLOAD_ROUTES.items())
def test_an_unknown_form_field_is_refused_naming_it(
    live_server: LiveServer, path: str, field: str
) -> None:
    files = [(field, jpeg_file("coffee"))]
    response = live_server.upload(path, files, data={"topk": "2"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["topk"] and field in detail["msg"]


def test_a_repeated_value_field_is_refused(live_server: LiveServer) -> None:
    files = [("images", jpeg_file("coffee")), ("top_k", (None, b"2")), ("top_k", (None, b"5"))]
    response = live_server.upload("/flowers/upload", files)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["top_k"]


def websocket_handshake(server: LiveServer, path: str, *headers: str) -> tuple[int, bytes]:
    """Open a WebSocket handshake by hand: the HTTP status and body the server answers."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    with connect(server, timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)) and (chunk := sock.recv(65536)):
            body += chunk
    return int(head.split(b" ", 2)[1]), body


def audit_lines(server: LiveServer, request_id: str) -> list[dict]:
    lines = server.log_lines_with(request_id)
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_websocket_handshakes_need_a_token_and_are_audited(live_server: LiveServer) -> None:
    """WebSocket scopes skipped both auth and the audit log."""
    status, body = websocket_handshake(live_server, "/heatflow", "X-Request-ID: ws-anon-1")
    assert status == 401, body
    assert json.loads(body)["detail"][0]["loc"] == ["header", "authorization"]
    [line] = audit_lines(live_server, "ws-anon-1")
    assert line["method"] == "WEBSOCKET" and line["status"] == 401
    assert line["endpoint"] == "/heatflow" and line["token_id"] is None

    bearer = f"Authorization: Bearer {live_server.token}"
    status, _ = websocket_handshake(live_server, "/heatflow", bearer, "X-Request-ID: ws-admin-1")
    assert status == 403  # a valid token, but no endpoint of this service is a WebSocket
    [line] = audit_lines(live_server, "ws-admin-1")
    assert line["token_id"] == "test-admin" and line["status"] == 403


def test_forwarded_for_is_ignored_from_an_untrusted_peer(live_server: LiveServer) -> None:
    """`security.trusted_proxies` is empty in the shipped configuration: nobody may claim to be
    someone else in the audit log."""
    headers = {"x-forwarded-for": "203.0.113.9", "x-request-id": "xff-untrusted-1"}
    assert live_server.post("/heatflow", HEAT_BODY.decode(), headers=headers).status_code == 200
    [line] = audit_lines(live_server, "xff-untrusted-1")
    assert line["client"] == "127.0.0.1"
