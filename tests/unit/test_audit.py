"""The audit middleware on a real Starlette app: file output, rotation, opt-in input."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from despliegue.audit import AuditLog, model_tags
from despliegue.config import AuditSettings


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
