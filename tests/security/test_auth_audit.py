"""Bearer tokens, scopes and the audit log on the shared live server (auth on)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from despliegue.tokens import new_token
from tests.conftest import HEATFLOW_TOKEN, SESSION_TOKENS, SESSION_TOKENS_FILE, LiveServer

pytestmark = pytest.mark.integration

HEAT_BODY = {"sediment_thickness_m": [100.0]}
WRONG_TOKENS = (
    "dsp.test-admin.this-is-not-the-secret-0123456789",
    "dsp.nobody.this-is-not-the-secret-0123456789",
    "not-even-our-format",
)


def call(live_server: LiveServer, method: str, path: str, headers: dict[str, str]):
    body = json.dumps(HEAT_BODY) if method == "POST" else None
    headers = {"content-type": "application/json", **headers}
    return httpx.request(method, f"{live_server.url}{path}", content=body, headers=headers)


def assert_json_refusal(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"].startswith("authorization: ")
    assert body["detail"][0]["loc"] == ["header", "authorization"]


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz"])
def test_probes_need_no_token(live_server: LiveServer, path: str) -> None:
    assert httpx.get(f"{live_server.url}{path}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/heatflow"), ("POST", "/falsetrue"), ("GET", "/models"), ("GET", "/metrics")],
)
def test_missing_token_is_401_with_json_body(live_server: LiveServer, method, path) -> None:
    response = call(live_server, method, path, {})
    assert_json_refusal(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "missing bearer token" in response.json()["error"]


@pytest.mark.parametrize("token", WRONG_TOKENS)
def test_wrong_token_is_401(live_server: LiveServer, token: str) -> None:
    response = call(live_server, "POST", "/heatflow", {"authorization": f"Bearer {token}"})
    assert_json_refusal(response, 401)
    assert "invalid token" in response.json()["error"]


def test_other_schemes_than_bearer_are_401(live_server: LiveServer) -> None:
    response = call(
        live_server, "POST", "/heatflow", {"authorization": f"Basic {SESSION_TOKENS[0]}"}
    )
    assert_json_refusal(response, 401)


def test_token_without_the_family_is_403(live_server: LiveServer) -> None:
    limited = {"authorization": f"Bearer {HEATFLOW_TOKEN}"}
    assert call(live_server, "POST", "/heatflow", limited).status_code == 200
    forbidden = call(live_server, "POST", "/falsetrue", limited)
    assert_json_refusal(forbidden, 403)
    assert "'test-heatflow' may not call 'falsetrue'" in forbidden.json()["error"]
    assert_json_refusal(call(live_server, "GET", "/models", limited), 403)


def test_metrics_need_a_token_and_docs_do_not(live_server: LiveServer) -> None:
    assert live_server.get("/metrics").status_code == 200
    assert httpx.get(f"{live_server.url}/docs.json").status_code == 200


def audit_lines(live_server: LiveServer, request_id: str) -> list[dict]:
    """The audit lines of one request (JSON lines on the server's stdout)."""
    lines = live_server.log_lines_with(request_id)
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_every_call_writes_one_audit_line(live_server: LiveServer) -> None:
    response = live_server.post("/heatflow", HEAT_BODY, headers={"x-request-id": "audit-ok-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "audit-ok-1"
    [line] = audit_lines(live_server, "audit-ok-1")
    assert line["token_id"] == "test-admin"
    assert line["endpoint"] == "/heatflow"
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert line["models"] == [response.json()["model"]]
    assert line["latency_ms"] > 0
    assert line["time"].endswith("+00:00")
    assert "input" not in line and "100.0" not in json.dumps(line)


def test_refusals_are_audited_too(live_server: LiveServer) -> None:
    headers = {"x-request-id": "audit-refused-1", "content-type": "application/json"}
    httpx.post(f"{live_server.url}/heatflow", content=json.dumps(HEAT_BODY), headers=headers)
    [line] = audit_lines(live_server, "audit-refused-1")
    assert line["status"] == 401 and line["token_id"] is None


def test_a_bad_request_id_is_replaced(live_server: LiveServer) -> None:
    response = live_server.post("/heatflow", HEAT_BODY, headers={"x-request-id": "bad id\t!"})
    assert response.headers["x-request-id"] != "bad id\t!"
    assert len(response.headers["x-request-id"]) == 32


def test_no_token_value_in_the_server_log(live_server: LiveServer) -> None:
    for token in WRONG_TOKENS:
        call(live_server, "POST", "/heatflow", {"authorization": f"Bearer {token}"})
    live_server.post("/heatflow", {"sediment_thickness_m": [-1]})  # a logged client error
    time.sleep(1)
    log = live_server.log()
    for token in (*SESSION_TOKENS, *WRONG_TOKENS):
        assert token not in log
        assert token.rsplit(".", 1)[-1] not in log


def status_with(live_server: LiveServer, token: str) -> int:
    return call(live_server, "POST", "/heatflow", {"authorization": f"Bearer {token}"}).status_code


def wait_for_status(live_server: LiveServer, token: str, wanted: int) -> int:
    """Call until the answer is `wanted` (the server rereads its tokens file every few
    seconds) or 30 s have passed; the last status."""
    deadline = time.monotonic() + 30
    while (status := status_with(live_server, token)) != wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


@pytest.fixture
def tokens_file() -> Iterator[Path]:
    """The live server's tokens file, restored as it was after the test."""
    before = SESSION_TOKENS_FILE.read_text()
    yield SESSION_TOKENS_FILE
    SESSION_TOKENS_FILE.write_text(before)


def test_tokens_are_added_and_revoked_without_a_restart(
    live_server: LiveServer, tokens_file: Path
) -> None:
    token, record = new_token("reload-check", ["heatflow"])
    assert status_with(live_server, token) == 401
    tokens_file.write_text(f"{tokens_file.read_text()}{record.line()}\n")
    assert wait_for_status(live_server, token, 200) == 200
    tokens_file.write_text("# reload-check revoked\n")
    assert wait_for_status(live_server, token, 401) == 401
    assert status_with(live_server, SESSION_TOKENS[0]) == 200  # the env tokens stay
    assert token.rsplit(".", 1)[-1] not in live_server.log()


def test_a_broken_tokens_file_keeps_the_tokens_in_force(
    live_server: LiveServer, tokens_file: Path
) -> None:
    token, record = new_token("kept-check", ["heatflow"])
    tokens_file.write_text(f"{record.line()}\n")
    assert wait_for_status(live_server, token, 200) == 200
    tokens_file.write_text(f"{record.line()}\nthis line is not a hash line\n")
    deadline = time.monotonic() + 30
    while not live_server.log_lines_with("tokens file changed but was not loaded", wait_s=0):
        assert status_with(live_server, token) == 200  # each call may trigger the reread
        assert time.monotonic() < deadline, "the changed file was never reread"
        time.sleep(0.5)
    assert status_with(live_server, token) == 200


def legacy_line(token_id: str, secret: str, allow: str) -> str:
    """A hash line as earlier versions wrote it (PBKDF2, 20,000 rounds)."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 20_000)
    salt_text, digest_text = (
        base64.urlsafe_b64encode(raw).decode().rstrip("=") for raw in (salt, digest)
    )
    return f"{token_id} pbkdf2_sha256$20000${salt_text}${digest_text} {allow}"


def test_earlier_pbkdf2_lines_still_work_within_a_failure_budget(
    live_server: LiveServer, tokens_file: Path
) -> None:
    secret = "legacy-secret-" + os.urandom(16).hex()
    tokens_file.write_text(legacy_line("legacy-check", secret, "heatflow") + "\n")
    assert wait_for_status(live_server, f"dsp.legacy-check.{secret}", 200) == 200
    wrong = [status_with(live_server, f"dsp.legacy-check.wrong-{n}") for n in range(8)]
    assert wrong[0] == 401 and wrong[-1] == 429, wrong
    answer = call(live_server, "POST", "/heatflow", {"authorization": "Bearer dsp.legacy-check.x"})
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    assert status_with(live_server, SESSION_TOKENS[0]) == 200  # other tokens are not throttled
