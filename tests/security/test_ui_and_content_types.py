"""The Swagger UI calls no third party; malformed content types are 4xx, never 500."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

URL_IN_PAGE = re.compile(r"""(?:src|href|url)\s*[=:(]\s*["']?([^"'\s)>]+)""", re.IGNORECASE)


def test_ui_page_loads_only_same_origin_assets(live_server: LiveServer) -> None:
    page = httpx.get(f"{live_server.url}/")
    assert page.status_code == 200
    html = page.text
    assert "googletagmanager" not in html.lower() and "gtm" not in html.lower()
    assert not re.search(r"(https?:)?//", html), "an absolute or protocol-relative URL"
    references = URL_IN_PAGE.findall(html)
    assert references and all(ref.startswith("./") for ref in references), references
    for ref in references:  # every asset the page names is served here
        assert httpx.get(f"{live_server.url}/{ref.removeprefix('./')}").status_code == 200, ref
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy


def test_no_other_docs_page_loads_third_party_assets(live_server: LiveServer) -> None:
    """FastAPI's own /docs and /redoc pages (CDN assets) are switched off on the catalog app."""
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = live_server.get(path)
        assert response.status_code == 404 or "cdn." not in response.text, path


def test_shared_path_names_every_method_it_allows(live_server: LiveServer) -> None:
    response = httpx.request(
        "OPTIONS", f"{live_server.url}/antibiotics", headers=live_server.headers
    )
    assert response.status_code == 405
    assert {"GET", "POST"} <= set(response.headers["allow"].replace(" ", "").split(","))


def test_ui_initializer_turns_off_the_online_validator(live_server: LiveServer) -> None:
    script = httpx.get(f"{live_server.url}/ui/swagger-initializer.js").text
    assert "validatorUrl: null" in script and "http" not in script


def test_openapi_document_has_no_third_party_links_and_declares_auth(
    live_server: LiveServer,
) -> None:
    doc = httpx.get(f"{live_server.url}/docs.json").json()
    assert "http" not in str(doc["info"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    heatflow = doc["paths"]["/heatflow"]["post"]
    assert heatflow["security"] == [{"bearer": []}]
    assert {"400", "401", "403", "413", "422"} <= heatflow["responses"].keys()
    assert "security" not in doc["paths"]["/livez"]["get"]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("multipart/form-data", 415),
        ("multipart/form-data; boundary=xyz", 415),
        ("application/x-www-form-urlencoded", 415),
    ],
)
def test_forms_sent_to_json_endpoints_are_refused(
    live_server: LiveServer, content_type: str, status: int
) -> None:
    response = live_server.post(
        "/heatflow", {"sediment_thickness_m": [1.0]}, headers={"content-type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "content-type"]
