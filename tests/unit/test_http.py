"""The body-size middleware on a real Starlette app (no mocks): 413 before parsing."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from despliegue.http import BodySizeLimit, UploadFieldGuard

LIMIT = 2048


async def echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


@pytest.fixture
def client() -> TestClient:
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"])])
    app.add_middleware(BodySizeLimit, max_body_bytes=LIMIT)
    return TestClient(app)


def test_body_within_the_limit_passes(client: TestClient) -> None:
    response = client.post("/echo", content=b"x" * LIMIT)
    assert response.status_code == 200 and response.json() == {"received": LIMIT}


def test_declared_oversized_body_gets_413_naming_the_limit(client: TestClient) -> None:
    response = client.post("/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]


def test_chunked_oversized_body_gets_413(client: TestClient) -> None:
    def chunks():
        for _ in range(5):
            yield b"x" * 1000

    response = client.post("/echo", content=chunks())
    assert response.status_code == 413


def test_chunked_body_within_the_limit_is_replayed_whole(client: TestClient) -> None:
    response = client.post("/echo", content=iter([b"a" * 500, b"b" * 500]))
    assert response.json() == {"received": 1000}


async def count_files(request: Request) -> JSONResponse:
    form = await request.form()
    return JSONResponse({"files": len(form.getlist("images"))})


@pytest.fixture
def upload_client() -> TestClient:
    app = Starlette(routes=[Route("/upload", count_files, methods=["POST"])])
    app.add_middleware(
        UploadFieldGuard, file_fields={"/upload": frozenset({"images"})}, max_body_bytes=LIMIT
    )
    return TestClient(app)


def test_uploaded_files_pass_the_guard_whole(upload_client: TestClient) -> None:
    files = [
        ("images", ("a.png", b"x" * 100, "image/png")),
        ("images", ("b.png", b"y", "image/png")),
    ]
    response = upload_client.post("/upload", files=files)
    assert response.status_code == 200 and response.json() == {"files": 2}


def test_text_in_a_file_field_is_refused_naming_it(upload_client: TestClient) -> None:
    files = [("images", ("a.png", b"x", "image/png"))]
    response = upload_client.post("/upload", files=files, data={"images": "http://example.org/x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["images", 0]  # httpx sends fields first


def test_malformed_multipart_is_a_400(upload_client: TestClient) -> None:
    response = upload_client.post(
        "/upload",
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nno name\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert 400 <= response.status_code < 500


def test_oversized_upload_is_a_413(upload_client: TestClient) -> None:
    files = [("images", ("a.png", b"x" * (LIMIT + 1), "image/png"))]
    assert upload_client.post("/upload", files=files).status_code == 413
