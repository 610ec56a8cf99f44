"""A second server with its own configuration: HTTPS with a self-signed certificate made
here, auth switched off (loudly), and the audit log written to a rotating file."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from despliegue.config import DEFAULT_CONFIG_PATH
from tests.conftest import start_server, stop_server, wait_until_serving

pytestmark = pytest.mark.integration


@dataclass
class TlsServer:
    url: str
    context: ssl.SSLContext
    log_path: Path
    audit_path: Path


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed; it makes the test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder)
    home = folder / "home"
    shutil.copytree(Path(reference_store) / "models", home / "models")
    audit_path = folder / "audit" / "audit.jsonl"
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["security"]["audit"].update(stdout=False, file=str(audit_path))
    raw["bentoml"]["services"]["Despliegue"]["ssl"] = {
        "enabled": True,
        "certfile": str(cert),
        "keyfile": str(key),
    }
    config = folder / "configuration.yaml"
    config.write_text(yaml.safe_dump(raw))
    log_path = folder / "serve.log"
    env = {"DESPLIEGUE_CONFIG": str(config), "DESPLIEGUE_AUTH": "off", "DESPLIEGUE_TOKENS": ""}
    process = start_server(str(home), log_path, env)
    url = f"https://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
    context = ssl.create_default_context(cafile=str(cert))
    try:
        wait_until_serving(url, process, log_path, verify=context)
        yield TlsServer(url, context, log_path, audit_path)
    finally:
        stop_server(process)


def test_serves_https_with_the_configured_certificate(tls_server: TlsServer) -> None:
    response = httpx.post(
        f"{tls_server.url}/heatflow",
        json={"sediment_thickness_m": [500.0]},
        verify=tls_server.context,
    )
    assert response.status_code == 200, response.text
    assert response.http_version == "HTTP/1.1"
    with pytest.raises(httpx.ConnectError):  # a client that does not trust it is refused
        httpx.get(f"{tls_server.url}/livez", verify=ssl.create_default_context())


def test_plain_http_is_not_answered_on_the_tls_port(tls_server: TlsServer) -> None:
    plain = tls_server.url.replace("https://", "http://")
    try:
        response = httpx.get(f"{plain}/livez", timeout=5)
    except httpx.HTTPError:
        return
    assert response.status_code >= 400


def test_auth_off_is_explicit_and_loud(tls_server: TlsServer) -> None:
    response = httpx.get(f"{tls_server.url}/models", verify=tls_server.context)
    assert response.status_code == 200
    assert "AUTH DISABLED for local development" in tls_server.log_path.read_text()


def test_audit_lines_go_to_the_configured_file(tls_server: TlsServer) -> None:
    httpx.post(
        f"{tls_server.url}/falsetrue",
        json={"texts": ["Texto privado que no debe quedar en el registro."]},
        headers={"x-request-id": "tls-audit-1"},
        verify=tls_server.context,
    )
    lines = [json.loads(line) for line in tls_server.audit_path.read_text().splitlines()]
    [line] = [entry for entry in lines if entry["request_id"] == "tls-audit-1"]
    assert line["endpoint"] == "/falsetrue" and line["status"] == 200
    assert line["token_id"] is None
    assert line["models"][0].startswith("falsetrue_classifier:")
    assert "privado" not in tls_server.audit_path.read_text()
    assert "tls-audit-1" not in tls_server.log_path.read_text()  # file only, as configured
