"""The HTTP guards on real Starlette apps (no mocks): framing, size, media types, forms."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from despliegue.http.guards import (
    JSON,
    MULTIPART,
    VALUE_PART_MAX_BYTES,
    BodySizeLimit,
    ContentTypeGuard,
    FormField,
    InFlightLimit,
    MethodNotAllowed,
    UploadFieldGuard,
    form_fields,
)

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
    forms = {"/upload": {"images": FormField(file=True, many=True)}}
    app.add_middleware(UploadFieldGuard, forms=forms, max_body_bytes=LIMIT)
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


async def run_asgi(app: ASGIApp, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> dict:
    """Call an ASGI app with headers exactly as given (repeats included): status and body."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": headers,
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    answer: dict = {"body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return {"status": answer["status"], **json.loads(answer["body"])}


def echo_app() -> ASGIApp:
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"])])
    return BodySizeLimit(app, max_body_bytes=LIMIT)


@pytest.mark.parametrize(
    ("headers", "loc"),
    [
        ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], "transfer-encoding"),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"1")], "transfer-encoding"),
        ([(b"content-length", b"3"), (b"content-length", b"3")], "content-length"),
        (
            [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
            "transfer-encoding",
        ),
    ],
)
def test_ambiguous_framing_is_refused(headers: list[tuple[bytes, bytes]], loc: str) -> None:
    """`Content-Length: 1` + chunked passed the limit while the server read the chunks."""
    answer = asyncio.run(run_asgi(echo_app(), headers, b"abc"))
    assert answer["status"] == 400 and answer["detail"][0]["loc"] == ["header", loc]


def test_a_chunked_body_within_the_limit_passes() -> None:
    answer = asyncio.run(run_asgi(echo_app(), [(b"transfer-encoding", b"chunked")], b"abc"))
    assert answer == {"status": 200, "received": 3}


@pytest.fixture
def typed_client() -> TestClient:
    routes = [Route(path, echo_length, methods=["POST"]) for path in ("/json", "/upload")]
    app = Starlette(routes=routes)
    app.add_middleware(ContentTypeGuard, media_types={"/json": JSON, "/upload": MULTIPART})
    return TestClient(app)


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/json", "application/json", 200),
        ("/json", "application/json; charset=utf-8", 200),
        ("/json", "application/merge-patch+json", 200),
        ("/json", None, 200),  # BentoML's default: JSON
        ("/json", "text/plain", 415),
        ("/json", "application/x-www-form-urlencoded", 415),
        ("/json", "multipart/form-data; boundary=x", 415),
        ("/upload", "multipart/form-data; boundary=x", 200),
        ("/upload", "multipart/form-data", 400),
        ("/upload", "application/x-www-form-urlencoded", 415),
        ("/upload", "application/json", 415),
        ("/upload", None, 415),
    ],
)
def test_each_endpoint_takes_its_own_media_type(
    typed_client: TestClient, path: str, content_type: str | None, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = typed_client.post(path, content=b"{}", headers=headers)
    assert response.status_code == status, response.text
    if status != 200:
        assert response.json()["detail"][0]["loc"] == ["header", "content-type"]


def test_a_repeated_content_type_is_a_400() -> None:
    """The guard read the last Content-Type and BentoML the first."""
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"])])
    guard = ContentTypeGuard(app, media_types={"/echo": JSON})
    headers = [(b"content-type", b"application/json"), (b"content-type", b"text/plain")]
    answer = asyncio.run(run_asgi(guard, headers, b"{}"))
    assert answer["status"] == 400 and answer["detail"][0]["loc"] == ["header", "content-type"]


class UploadForm(BaseModel):
    images: list[Path]
    photo: Path | None = None
    top_k: int = 3


def test_form_fields_are_read_from_the_input_model() -> None:
    assert form_fields(UploadForm, ["images", "photo"]) == {
        "images": FormField(file=True, many=True),
        "photo": FormField(file=True, many=False),
        "top_k": FormField(file=False, many=False),
    }


@pytest.fixture
def form_client() -> TestClient:
    app = Starlette(routes=[Route("/upload", count_files, methods=["POST"])])
    forms = {"/upload": form_fields(UploadForm, ["images", "photo"])}
    app.add_middleware(UploadFieldGuard, forms=forms, max_body_bytes=LIMIT)
    return TestClient(app)


@pytest.mark.parametrize(
    ("files", "loc", "msg"),
    [
        ([("images", ("a.png", b"x", "image/png")), ("extra", (None, b"1"))], ["extra"], "unknown"),
        (
            [("photo", ("a.png", b"x", "image/png")), ("photo", ("b.png", b"y", "image/png"))],
            ["photo"],
            "takes one file, got 2",
        ),
        ([("top_k", (None, b"1")), ("top_k", (None, b"2"))], ["top_k"], "takes one value"),
        ([("top_k", ("k.png", b"1", "image/png"))], ["top_k", 0], "not a file"),
        ([("photo", (None, b"http://example.org/x"))], ["photo", 0], "uploaded file"),
    ],
)
def test_form_fields_are_checked_one_by_one(
    form_client: TestClient, files: list, loc: list, msg: str
) -> None:
    response = form_client.post("/upload", files=files)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and msg in detail["msg"]


@pytest.mark.parametrize("media_type", ["application/json", "text/plain; charset=utf-8"])
def test_a_value_sent_as_its_own_part_is_a_value(form_client: TestClient, media_type: str) -> None:
    """Swagger UI sends a form value as a part named "blob" with a JSON media type (OpenAPI's
    Encoding Object); BentoML reads such a part as the value."""
    files = [("images", ("a.png", b"x", "image/png")), ("top_k", ("blob", b"3", media_type))]
    response = form_client.post("/upload", files=files)
    assert response.status_code == 200, response.text


def test_a_large_part_for_a_value_is_a_file() -> None:
    app = Starlette(routes=[Route("/upload", count_files, methods=["POST"])])
    forms = {"/upload": form_fields(UploadForm, ["images", "photo"])}
    app.add_middleware(UploadFieldGuard, forms=forms, max_body_bytes=1_000_000)
    files = [("top_k", ("blob", b"1" * (VALUE_PART_MAX_BYTES + 1), "application/json"))]
    response = TestClient(app).post("/upload", files=files)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["top_k", 0]


def test_every_guard_lets_the_lifespan_through() -> None:
    """The app's start-up runs through every middleware: a guard that reads request headers
    from a lifespan scope stops the service from ever starting."""
    started = []

    async def app(scope: dict, receive: object, send: object) -> None:
        started.append(scope["type"])

    guards = [
        BodySizeLimit(app, max_body_bytes=LIMIT),
        ContentTypeGuard(app, media_types={"/json": JSON}),
        UploadFieldGuard(app, forms={"/upload": {}}, max_body_bytes=LIMIT),
        MethodNotAllowed(app, allowed={"/x": frozenset({"GET"})}),
    ]
    for guard in guards:
        asyncio.run(guard({"type": "lifespan", "asgi": {"version": "3.0"}}, None, None))
    assert started == ["lifespan"] * len(guards)


def test_requests_past_the_in_flight_limit_get_503_at_once_and_the_rest_are_answered() -> None:
    """Two slow requests hold the worker's two places: a third to a limited path is refused at
    once (503, Retry-After, the error body naming the setting), one to another path is not,
    and once the two answer the next request is admitted again."""
    import httpx

    release = asyncio.Event()

    async def slow(request: Request) -> JSONResponse:
        await release.wait()
        return JSONResponse({"ok": True})

    async def catalog(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/slow", slow, methods=["POST"]), Route("/models", catalog)])
    app.add_middleware(InFlightLimit, max_in_flight=2, paths=frozenset({"/slow"}))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/slow")) for _ in range(2)]
            for _ in range(500):  # until both are inside the app (at most 5 s)
                if _in_flight(app) == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await asyncio.wait_for(client.post("/slow"), timeout=5)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["detail"][0]["loc"] == ["request"]
            assert "limits.max_requests_in_flight" in refused.json()["error"]
            assert (await client.get("/models")).status_code == 200
            release.set()
            assert [answer.status_code for answer in await asyncio.gather(*held)] == [200, 200]
            assert (await client.post("/slow")).status_code == 200

    asyncio.run(scenario())


def _in_flight(app: Starlette) -> int:
    """The InFlightLimit instance's count, found in the built middleware stack."""
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, InFlightLimit):
        layer = getattr(layer, "app", None)
    return layer.in_flight if layer is not None else 0


def test_a_class_of_slow_requests_holds_only_its_share_of_the_places() -> None:
    """Image requests may hold 2 of the worker's 4 places: a third image request is refused
    (503 naming the class's setting) while heat-flow requests still get the other places."""
    import httpx

    release = asyncio.Event()

    async def slow(request: Request) -> JSONResponse:
        await release.wait()
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/face", slow, methods=["POST"]), Route("/heatflow", slow, methods=["POST"])]
    )
    app.add_middleware(
        InFlightLimit,
        max_in_flight=4,
        paths=frozenset({"/face", "/heatflow"}),
        classes={"/face": "images", "/heatflow": "light"},
        class_limits={"images": 2},
    )

    async def until_in_flight(count: int) -> None:
        for _ in range(500):
            if _in_flight(app) == count:
                return
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            images = [asyncio.create_task(client.post("/face")) for _ in range(2)]
            await until_in_flight(2)
            refused = await asyncio.wait_for(client.post("/face"), timeout=5)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "limits.in_flight_share.images" in refused.json()["error"]
            light = [asyncio.create_task(client.post("/heatflow")) for _ in range(2)]
            await until_in_flight(4)
            full = await asyncio.wait_for(client.post("/heatflow"), timeout=5)
            assert full.status_code == 503
            assert "limits.max_requests_in_flight" in full.json()["error"]
            release.set()
            answers = await asyncio.gather(*images, *light)
            assert [answer.status_code for answer in answers] == [200] * 4
            assert (await client.post("/face")).status_code == 200

    asyncio.run(scenario())
