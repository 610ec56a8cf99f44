"""A second server with its own configuration: HTTPS with a self-signed certificate made
here, auth switched off (loudly), the audit log written to a rotating file, and this host
trusted as a reverse proxy."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
    cert: Path


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
    raw["security"]["trusted_proxies"] = ["127.0.0.1"]
    raw["bentoml"]["services"]["Despliegue"]["ssl"] = {
        "enabled": True,
        "certfile": str(cert),
        "keyfile": str(key),
    }
    config = folder / "configuration.yaml"
    config.write_text(yaml.safe_dump(raw))
    log_path = folder / "serve.log"
    env = {"DESPLIEGUE_CONFIG": str(config), "DESPLIEGUE_AUTH": "off", "DESPLIEGUE_TOKENS": ""}
    # A server of its own: TLS, auth off and the audit file are settings read at start.
    process = start_server(str(home), log_path, env)
    url = f"https://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
    context = ssl.create_default_context(cafile=str(cert))
    try:
        wait_until_serving(url, process, log_path, verify=context)
        yield TlsServer(url, context, log_path, audit_path, cert)
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


def handshake(server: TlsServer, ciphers: str, version: ssl.TLSVersion) -> str:
    """A TLS handshake offering only `ciphers` at exactly `version`: the suite agreed on."""
    context = ssl.create_default_context(cafile=str(server.cert))
    context.minimum_version = context.maximum_version = version
    context.set_ciphers(ciphers)
    address = urlsplit(server.url)
    with (
        socket.create_connection((address.hostname, address.port), timeout=30) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        return tls.cipher()[0]


# TLS 1.2 suites a client may offer that are not AEAD: CBC with SHA-1 or SHA-2 MACs.
CBC_SUITES = [
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "AES128-SHA256",
]


@pytest.mark.parametrize("suite", CBC_SUITES)
def test_tls12_offers_no_cbc_suite(tls_server: TlsServer, suite: str) -> None:
    """BentoML's default cipher string ("TLSv1") offered only CBC suites with SHA-1 MACs."""
    with pytest.raises(ssl.SSLError):
        handshake(tls_server, suite, ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize(
    "suite",
    ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"],
)
def test_tls12_agrees_on_aead_suites(tls_server: TlsServer, suite: str) -> None:
    assert handshake(tls_server, suite, ssl.TLSVersion.TLSv1_2) == suite


def test_tls13_is_served(tls_server: TlsServer) -> None:
    assert handshake(tls_server, "DEFAULT", ssl.TLSVersion.TLSv1_3).startswith("TLS_")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_12_is_refused(tls_server: TlsServer, version: ssl.TLSVersion) -> None:
    """The client here allows the old protocol (security level 0), so a refusal is the
    server's."""
    with pytest.raises(ssl.SSLError):
        handshake(tls_server, "ALL:@SECLEVEL=0", version)


def test_openssl_sees_only_aead_suites(tls_server: TlsServer) -> None:
    """What `openssl s_client` negotiates with no cipher preference of its own."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    address = urlsplit(tls_server.url)
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"{address.hostname}:{address.port}", "-tls1_2"],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    negotiated = re.search(rb"Cipher is (\S+)", result.stdout)
    assert negotiated is not None, result.stdout[-2000:]
    assert negotiated.group(1).endswith((b"GCM-SHA256", b"GCM-SHA384", b"POLY1305"))


def test_forwarded_for_names_the_client_behind_a_trusted_proxy(tls_server: TlsServer) -> None:
    httpx.post(
        f"{tls_server.url}/heatflow",
        json={"sediment_thickness_m": [500.0]},
        headers={"x-request-id": "tls-proxy-1", "x-forwarded-for": "198.51.100.4, 10.0.0.2"},
        verify=tls_server.context,
    )
    lines = [json.loads(line) for line in tls_server.audit_path.read_text().splitlines()]
    [line] = [entry for entry in lines if entry["request_id"] == "tls-proxy-1"]
    # The nearest address the trusted proxy did not add itself: 10.0.0.2 is not trusted here.
    assert line["client"] == "10.0.0.2"
