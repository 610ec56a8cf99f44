"""The body-size middleware on a real Starlette app (no mocks): 413 before parsing."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from despliegue.http import BodySizeLimit

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
