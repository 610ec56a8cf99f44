"""/docs.json as tools of the ecosystem read it: a strict JSON reader, a spec validator, a client
generator (whose client then calls the service), and the checks the Swagger UI relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from despliegue import __version__
from tests.conftest import BIN, LiveServer

pytestmark = pytest.mark.integration


def strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (Swagger UI's YAML parser does; Python keeps the
    last one silently)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    assert not repeated, f"duplicated keys in one object: {repeated}"
    return dict(pairs)


@pytest.fixture(scope="module")
def document(live_server: LiveServer) -> dict[str, Any]:
    raw = httpx.get(f"{live_server.url}/docs.json", timeout=30).text
    return json.loads(raw, object_pairs_hook=strict_pairs)


def test_document_validates_as_openapi_3_1(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    assert document["openapi"] == "3.1.0"
    validate(document)


def test_document_names_the_product_version(document: dict[str, Any]) -> None:
    assert document["info"]["version"].startswith(__version__)


def test_every_operation_has_a_family_tag_and_a_summary(document: dict[str, Any]) -> None:
    tags = {tag["name"] for tag in document["tags"]}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert len(operation["tags"]) == 1 and operation["tags"][0] in tags, (method, path)
            assert operation["summary"].strip(), (method, path)
            assert all(isinstance(code, str) for code in operation["responses"]), (method, path)
    by_tag = {
        path: operations["post"]["tags"][0]
        for path, operations in document["paths"].items()
        if "post" in operations
    }
    assert by_tag["/heatflow"] == "heatflow" and by_tag["/super"] == "img_super"
    assert by_tag["/flowers/upload"] == "flowers" and by_tag["/models"] == "catalog"


def test_every_json_request_has_an_example_inside_the_schema(document: dict[str, Any]) -> None:
    """What "Try it out" fills in: the example of every required field, valid for its schema."""
    from jsonschema import Draft202012Validator

    for path, operations in document["paths"].items():
        body = operations.get("post", {}).get("requestBody", {}).get("content", {})
        schema = body.get("application/json", {}).get("schema")
        if not schema or not schema.get("required"):
            continue
        for field in schema["required"]:
            examples = schema["properties"][field].get("examples")
            assert examples, (path, field)
            field_schema = {**schema["properties"][field], "$defs": document["components"]}
            Draft202012Validator(field_schema).validate(examples[0])


def test_every_answer_names_its_model_once_and_model_tag_is_deprecated(
    document: dict[str, Any], live_server: LiveServer
) -> None:
    """`model` is the answering model's one name; `model_tag` stays one release, deprecated."""
    schemas = document["components"]["schemas"]
    answers = {
        name: schema["properties"]
        for name, schema in schemas.items()
        if "model_tag" in schema.get("properties", {})
    }
    assert len(answers) >= 6, sorted(answers)
    for name, properties in answers.items():
        assert properties["model_tag"].get("deprecated") is True, name
        assert not properties["model"].get("deprecated"), name
    answer = live_server.post("/heatflow", {"sediment_thickness_m": 1000}).json()
    assert answer["model"] == answer["model_tag"] and answer["model"].startswith("heatflow_svr:")


def test_file_fields_are_standard_and_nothing_names_internal_classes(
    document: dict[str, Any],
) -> None:
    text = json.dumps(document)
    assert '"type": "file"' not in text
    upload = document["paths"]["/flowers/upload"]["post"]["requestBody"]["content"]
    images = upload["multipart/form-data"]["schema"]["properties"]["images"]
    assert images["items"]["type"] == "string" and images["items"]["format"] == "binary"
    titles = [s.get("title", "") for s in document["components"]["schemas"].values()]
    assert "HeatFlowRequest" in titles


def test_a_generated_client_calls_the_service(
    document: dict[str, Any], live_server: LiveServer, tmp_path: Path
) -> None:
    spec = tmp_path / "docs.json"
    spec.write_text(json.dumps(document))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Warning" not in output and "Unable to parse" not in output, output
    package = next(p for p in tmp_path.iterdir() if (p / "client.py").exists())
    call = f"""
import typing
from {package.name} import AuthenticatedClient
from {package.name}.api.heatflow import despliegue_heatflow_predict as predict

client = AuthenticatedClient(base_url={live_server.url!r}, token={live_server.token!r})
Body = typing.get_type_hints(predict.sync)["body"]
body = Body.from_dict({{"sediment_thickness_m": [250.0, 1500.0]}})
answer = predict.sync(client=client, body=body)
print(answer.model, len(answer.heat_flow_mw_m2))
"""
    called = subprocess.run(
        [sys.executable, "-c", call], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert called.returncode == 0, called.stderr
    assert called.stdout.startswith("heatflow_svr:") and called.stdout.split()[1] == "2"
