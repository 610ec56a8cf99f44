"""/docs.json built in-process (no runner is started): its error schema is the ErrorBody model
every error is written from, and its operations are grouped by the registry's families."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from despliegue import registry
from despliegue.http.docs import ERRORS, error_schemas
from despliegue.tokens import TOKENS_ENV
from tests.conftest import SESSION_TOKEN_LINES


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKENS_ENV, SESSION_TOKEN_LINES)
        import service

        answer = TestClient(service.Despliegue.to_asgi()).get("/docs.json")
    assert answer.status_code == 200, answer.text
    return json.loads(answer.text)


def test_the_error_schema_is_generated_from_the_error_body_model(document: dict) -> None:
    schemas = document["components"]["schemas"]
    assert {name: schemas[name] for name in error_schemas()} == error_schemas()
    refs = {
        json.dumps(answer["content"])
        for operations in document["paths"].values()
        for operation in operations.values()
        for code, answer in operation["responses"].items()
        if code in ERRORS  # the error answers the product declares (BentoML adds 500)
    }
    assert refs == {
        json.dumps({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
    }


def test_a_404_is_documented_where_a_family_is_looked_up_and_nowhere_else(document: dict) -> None:
    """GET/POST /drift and the shadow comparison answer 404 for an unknown family, the V2 model
    routes for a model or version not loaded, with the product's error body; BentoML's own 404
    (another body) on every API is not kept."""
    documented = {
        (method, path): answer["content"]["application/json"]["schema"]["$ref"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for code, answer in operation["responses"].items()
        if code == "404"
    }
    error_body = "#/components/schemas/ErrorBody"
    v2_models = {
        (method, path): error_body
        for path, operations in document["paths"].items()
        if path.startswith("/v2/models/{name}")
        for method in operations
    }
    assert len(v2_models) == 6  # metadata, ready and infer; each also at one version
    assert documented == {
        ("get", "/drift/{family}"): error_body,
        ("post", "/drift"): error_body,
        ("get", "/models/{family}/compare"): error_body,
        **v2_models,
    }


def test_operations_are_grouped_by_the_registry_families(document: dict) -> None:
    for family in registry.FAMILIES:
        for segment in family.paths:
            assert document["paths"][f"/{segment}"]["post"]["tags"] == [family.tag]
    described = {tag["name"]: tag["description"] for tag in document["tags"]}
    assert all(described[family.tag] == family.summary for family in registry.FAMILIES)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/heatflow", "sediment_thickness_m"),
        ("/falsetrue", "texts"),
        ("/flowers", "images"),
        ("/face", "input_data"),
        ("/antibiotics", "features"),
    ],
)
def test_a_one_or_many_field_is_documented_as_both(document: dict, path: str, field: str) -> None:
    """BentoML inlines each request schema keeping an `anyOf`'s first branch only; the document
    shows both, as the Swagger UI and client generators need them."""
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    one, many = body["schema"]["properties"][field]["anyOf"]
    assert many["type"] == "array" and many["items"] == one


def answer_schemas(document: dict) -> dict[str, dict]:
    """The response schemas that name the answering model, by title."""
    return {
        name.removesuffix("IODescriptor"): schema
        for name, schema in document["components"]["schemas"].items()
        if "model_tag" in schema.get("properties", {})
    }


def test_model_tag_is_deprecated_in_favour_of_model(document: dict) -> None:
    answers = answer_schemas(document)
    assert set(answers) == {
        "HeatFlowResponse",
        "FalseTrueResponse",
        "FlowersResponse",
        "FaceResponse",
        "SuperResponse",
        "AntibioticResult",
    }
    for name, schema in answers.items():
        assert schema["properties"]["model_tag"]["deprecated"] is True, name
        assert "deprecated" not in schema["properties"]["model"], name
        assert "`model`" in schema["properties"]["model_tag"]["description"], name


def test_a_split_request_names_both_tags_under_both_names() -> None:
    import service
    from despliegue.schemas import HeatFlowResponse

    answer = HeatFlowResponse(
        sediment_thickness_m=[1.0, 2.0],
        heat_flow_mw_m2=[50.0, 51.0],
        model="heatflow_svr:a",
        model_tag="heatflow_svr:a",
    )
    named = service.tagged(answer, ["heatflow_svr:a", "heatflow_svr:b"]).model_dump()
    assert named["model"] == named["model_tag"] == "heatflow_svr:a,heatflow_svr:b"
