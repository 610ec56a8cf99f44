"""Every client mistake is answered in the product's words: `{"error": "<field>: <rule>", ...}`.

BentoML's own wording ("1 validation error for HeatFlowRequestIODescriptor") names an internal
class and no field; despliegue/errors.py rewrites it.
"""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        (
            "/heatflow",
            {"sediment_thickness_m": [10.0, -1.0]},
            "sediment_thickness_m.1: Input should be greater than or equal to 0",
        ),
        ("/heatflow", {}, "sediment_thickness_m: Field required"),
        ("/heatflow", '{"sediment_thickness_m": [1,', "body: Invalid JSON"),
        ("/heatflow", "[]", "body: Input should be an object"),
        ("/falsetrue", {"texts": []}, "texts: List should have at least 1 item"),
        ("/face", {"input_data": 5}, "input_data: Input should be one image or a list of images"),
        ("/antibiotics", {"features": [[1.0]], "codes": ["amk"]}, "codes.0: String should match"),
    ],
)
def test_schema_violations_name_the_field_and_the_rule(
    live_server: LiveServer, path: str, body: object, error: str
) -> None:
    response = live_server.post(path, body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"].startswith(error), answer
    assert "IODescriptor" not in response.text and "validation error for" not in response.text
    assert isinstance(answer["detail"], list)


def test_an_upload_without_its_file_names_the_field(live_server: LiveServer) -> None:
    form_field = ("annotate", (None, b"true", "text/plain"))  # a field, no file
    response = live_server.upload("/face/upload", files=[form_field])  # type: ignore[list-item]
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "input_data: Field required"


# Paths no operation serves. The line breaks are the case a fuzzer found: Starlette's
# catch-all mount does not match them, and its outermost router answered "Not Found" in plain
# text where the document promises the error body.
@pytest.mark.parametrize(
    "path", ["/no-such-operation", "/drift/a%0Ab", "/drift/t%21%C3%87v%0A%C2%AEP%05", "/models%0A"]
)
def test_a_path_no_operation_serves_gets_the_error_body(live_server: LiveServer, path: str) -> None:
    response = live_server.get(path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    assert response.json()["error"] == "path: no operation here; /docs.json lists every one"
