"""The audit middleware on a real Starlette app: file output, rotation, opt-in input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from despliegue.config import AuditSettings
from despliegue.http.audit import AuditLog, model_tags


async def predict(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"value": 1, "model": "heatflow_svr:abc"})


def client_with(audit: AuditSettings) -> TestClient:
    app = Starlette(routes=[Route("/heatflow", predict, methods=["POST"])])
    app.add_middleware(AuditLog, audit=audit)
    return TestClient(app)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_go_to_a_rotating_file_without_the_input(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    audit = AuditSettings(stdout=False, file=str(path), max_file_bytes=4096, backup_count=2)
    client = client_with(audit)
    for number in range(40):
        client.post(
            "/heatflow",
            content=b'{"secret": "patient-123"}',
            headers={"x-request-id": f"r{number}"},
        )
    written = sorted(p.name for p in path.parent.iterdir())
    assert written == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]  # rotated, bounded
    last = lines(path)[-1]
    assert last["request_id"] == "r39" and last["models"] == ["heatflow_svr:abc"]
    assert last["status"] == 200 and last["endpoint"] == "/heatflow"
    assert not any("patient-123" in p.read_text() for p in path.parent.iterdir())


def test_input_is_logged_only_when_configured_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditSettings(stdout=False, file=str(path), include_input=True, max_input_chars=10)
    client_with(audit).post("/heatflow", content=b'{"secret": "patient-123"}')
    [line] = lines(path)
    assert line["input"] == '{"secret":' and line["input_truncated"] is True


def test_model_tags_are_read_from_single_and_catalogue_responses() -> None:
    assert model_tags(b'{"model": "a:1"}') == ["a:1"]
    assert model_tags(b'{"models": [{"tag": "a:1"}, {"tag": "b:2"}]}') == ["a:1", "b:2"]
    assert model_tags(b"[1, 2]") == [] and model_tags(b"not json") == []


def test_the_line_is_written_before_the_client_gets_its_answer(tmp_path: Path) -> None:
    """A client holding its answer can read its line: nothing waits for the app to return."""
    path = tmp_path / "audit.jsonl"
    app = Starlette(routes=[Route("/heatflow", predict, methods=["POST"])])
    middleware = AuditLog(app, AuditSettings(stdout=False, file=str(path)))
    seen_when_answered: list[list[dict]] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            seen_when_answered.append(lines(path) if path.exists() else [])

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/heatflow",
        "headers": [(b"x-request-id", b"a1")],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    asyncio.run(middleware(scope, receive, send))
    [[line]] = seen_when_answered
    assert line["request_id"] == "a1" and line["status"] == 200
    assert len(lines(path)) == 1  # and the app returning does not write a second one


def test_an_app_that_fails_before_answering_is_audited_as_500(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def broken(request: Request) -> JSONResponse:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/heatflow", broken, methods=["POST"])])
    app.add_middleware(AuditLog, audit=AuditSettings(stdout=False, file=str(path)))
    response = TestClient(app, raise_server_exceptions=False).post("/heatflow", content=b"{}")
    assert response.status_code == 500
    [line] = lines(path)
    assert line["status"] == 500 and line["endpoint"] == "/heatflow"


def test_a_request_cut_by_bentomls_timeout_is_audited_as_the_504_it_got(tmp_path: Path) -> None:
    """BentoML's TimeoutMiddleware sits outside every middleware of the service: past
    `traffic.timeout` it cancels the request and answers 504 itself."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    path = tmp_path / "audit.jsonl"

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(5)
        return JSONResponse({"model": "heatflow_svr:abc"})

    app = Starlette(routes=[Route("/heatflow", slow, methods=["POST"])])
    app.add_middleware(AuditLog, audit=AuditSettings(stdout=False, file=str(path)))
    app.add_middleware(TimeoutMiddleware, timeout=0.2)  # added last: the outermost
    response = TestClient(app).post("/heatflow", content=b"{}")
    assert response.status_code == 504
    [line] = lines(path)
    assert line["status"] == 504 and line["endpoint"] == "/heatflow"


def test_the_line_is_written_once_the_declared_body_is_sent(tmp_path: Path) -> None:
    """A response whose whole body goes out with more_body=True, then an empty final message
    (as a streamed response does): the client holds its answer after the first, so the line
    must already be in the file then."""
    path = tmp_path / "audit.jsonl"
    body = b'{"model": "heatflow_svr:v1"}'

    async def app(scope: dict, receive, send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    middleware = AuditLog(app, AuditSettings(stdout=False, file=str(path)))
    seen_when_body_sent: list[list[dict]] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            seen_when_body_sent.append(lines(path) if path.exists() else [])

    scope = {"type": "http", "method": "POST", "path": "/heatflow", "headers": [], "client": None}
    asyncio.run(middleware(scope, receive, send))
    [[line]] = seen_when_body_sent
    assert line["models"] == ["heatflow_svr:v1"] and line["status"] == 200
    assert len(lines(path)) == 1


def test_a_v2_answer_with_binary_tensors_is_audited_with_its_model_tag(tmp_path: Path) -> None:
    """An Open Inference answer asked in binary is a JSON header and then raw tensor bytes
    (not JSON as a whole): the tag is read from the header, as the protocol's encoder wrote it."""
    import numpy as np

    from despliegue.v2.protocol import Output, encode_response, parse_infer_request

    request = parse_infer_request(
        json.dumps(
            {
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
                "parameters": {"binary_data_output": True},
            }
        ).encode(),
        None,
    )
    outputs = [Output("heat_flow_mw_m2", "FP64", np.arange(300, dtype=np.float64))]
    body, headers = encode_response("heatflow_svr", "v7", request, outputs)

    async def answer(request: Request) -> Response:
        await request.body()
        return Response(body, headers=headers)

    app = Starlette(routes=[Route("/v2/models/heatflow_svr/infer", answer, methods=["POST"])])
    path = tmp_path / "audit.jsonl"
    app.add_middleware(AuditLog, audit=AuditSettings(stdout=False, file=str(path)))
    got = TestClient(app).post("/v2/models/heatflow_svr/infer", content=b"{}")
    assert got.headers["content-type"] == "application/octet-stream"
    [line] = lines(path)
    assert line["models"] == ["heatflow_svr:v7"]


def test_rotation_counts_what_other_workers_appended(tmp_path: Path) -> None:
    """API workers share the file: the size that decides rotation is the file's, not the
    lines this worker wrote."""
    path = tmp_path / "audit.jsonl"
    client = client_with(AuditSettings(stdout=False, file=str(path), max_file_bytes=4096))
    client.post("/heatflow", content=b"{}", headers={"x-request-id": "own"})
    with path.open("a", encoding="utf-8") as other_worker:
        other_worker.write("x" * 3900 + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl"]
    client.post("/heatflow", content=b"{}", headers={"x-request-id": "after"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1"]
    assert [line["request_id"] for line in lines(path)] == ["after"]


def test_a_backup_count_of_0_never_rotates(tmp_path: Path) -> None:
    """As with Python's RotatingFileHandler: no backups to keep means no rotation; the file
    grows."""
    path = tmp_path / "audit.jsonl"
    audit = AuditSettings(stdout=False, file=str(path), max_file_bytes=4096, backup_count=0)
    client = client_with(audit)
    for number in range(40):
        client.post("/heatflow", content=b"{}", headers={"x-request-id": f"r{number}"})
    assert [p.name for p in tmp_path.iterdir()] == ["audit.jsonl"]
    assert len(lines(path)) == 40 and path.stat().st_size > 4096


def test_a_failing_stdout_loses_no_answer_and_is_reported_once(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """stdout closed under the service (a pipe whose reader died): the requests are still
    answered, the file keeps every line, and the loss is on the service's log once, then the
    recovery once."""

    class BrokenPipe:
        def __init__(self) -> None:
            self.broken = True
            self.written: list[str] = []

        def write(self, text: str) -> int:
            if self.broken:
                raise BrokenPipeError(32, "Broken pipe")
            self.written.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    stdout = BrokenPipe()
    monkeypatch.setattr("sys.stdout", stdout)
    path = tmp_path / "audit.jsonl"
    client = client_with(AuditSettings(stdout=True, file=str(path)))
    with caplog.at_level("WARNING", logger="despliegue.http.audit"):
        statuses = [client.post("/heatflow", content=b"{}").status_code for _ in range(3)]
        stdout.broken = False
        statuses.append(client.post("/heatflow", content=b"{}").status_code)
    assert statuses == [200] * 4 and len(lines(path)) == 4
    assert [json.loads(text)["status"] for text in stdout.written] == [200]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "audit lines to stdout are being lost: [Errno 32] Broken pipe",
        "audit lines to stdout are written again",
    ]
