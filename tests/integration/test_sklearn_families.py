"""Heat flow and falsetrue through the real `bentoml serve`: raw HTTP and the Python client."""

from __future__ import annotations

import json

import bentoml
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration


def test_heatflow_decreases_with_sediment_thickness(live_server: LiveServer) -> None:
    response = live_server.post("/heatflow", {"sediment_thickness_m": [0, 2000, 8000]})
    assert response.status_code == 200, response.text
    body = response.json()
    thin, middle, thick = body["heat_flow_mw_m2"]
    # The reference relation is 45 + 55*exp(-h/2000): about 100, 65 and 46 mW/m².
    assert thin > middle > thick
    assert 85 < thin < 115 and 38 < thick < 58
    assert body["unit"] == "mW/m²"
    assert body["model"].startswith("heatflow_svr:")


def test_heatflow_single_value_answers_a_list_of_one(live_server: LiveServer) -> None:
    response = live_server.post("/heatflow", {"sediment_thickness_m": 1500})
    assert response.status_code == 200
    assert len(response.json()["heat_flow_mw_m2"]) == 1


def test_falsetrue_keeps_the_seed_contract(live_server: LiveServer) -> None:
    texts = [
        "El Ministerio de Sanidad publicó hoy el informe anual con datos de 2025.",
        "¡Increíble! Este remedio casero cura el cáncer en tres días y los médicos lo ocultan.",
    ]
    response = live_server.post("/falsetrue", {"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["is_falsetrue"] == [1, 0]
    assert all(0.0 <= p <= 1.0 for p in body["probability_real"])
    assert body["model"].startswith("falsetrue_classifier:")


def test_python_client_calls_every_sklearn_endpoint(live_server: LiveServer) -> None:
    with live_server.client() as client:
        heat = client.heatflow_predict(sediment_thickness_m=[100.0, 3000.0])
        verdicts = client.falsetrue_classify(texts=["Texto de prueba con datos del informe."])
    assert len(heat["heat_flow_mw_m2"]) == 2
    assert verdicts["is_falsetrue"][0] in (0, 1)


def test_client_error_raises_invalid_argument_in_the_python_client(live_server: LiveServer) -> None:
    with (
        live_server.client() as client,
        pytest.raises(bentoml.exceptions.BentoMLException, match="sediment_thickness_m"),
    ):
        client.heatflow_predict(sediment_thickness_m=[-5.0])


def test_models_lists_each_served_model(live_server: LiveServer) -> None:
    response = live_server.get("/models")
    assert response.status_code == 200
    cards = {card["family"]: card for card in response.json()["models"]}
    frameworks = {
        "heatflow": "sklearn",
        "falsetrue": "sklearn",
        "flowers": "keras",
        "face_detector": "mtcnn",
        "face_validator": "keras",
        "antibiotics": "keras",
    }
    assert cards.keys() == frameworks.keys()
    for family, card in cards.items():
        assert card["reference"] is True
        assert card["framework"] == frameworks[family]
        # The pretrained detector has no held-out split of ours; every trained reference has.
        assert ("metrics_held_out" in card["metadata"]) == (family != "face_detector")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/heatflow", '{"sediment_thickness_m": [1, NaN]}', "sediment_thickness_m"),
        ("/heatflow", {"sediment_thickness_m": [-3]}, "sediment_thickness_m"),
        ("/heatflow", {"sediment_thickness_m": [1e9]}, "sediment_thickness_m"),
        ("/heatflow", {"sediment_thickness_m": []}, "sediment_thickness_m"),
        ("/heatflow", {"sediment_thickness_m": [1.0] * 5000}, "sediment_thickness_m"),
        ("/heatflow", {"sediment_thickness_m": "deep"}, "sediment_thickness_m"),
        ("/heatflow", {"thickness": [1]}, "thickness"),
        ("/falsetrue", {"texts": ["ok", 42]}, "texts"),
        ("/falsetrue", {"texts": []}, "texts"),
        ("/falsetrue", {"texts": ["x" * 50_000]}, "texts"),
        ("/falsetrue", {"texts": ["a"] * 1000}, "texts"),
        ("/falsetrue", '{"texts": ["unterminated', None),
        ("/falsetrue", "[]", None),
    ],
)
def test_client_mistakes_get_a_4xx_naming_the_field(
    live_server: LiveServer, path: str, body: object, field: str | None
) -> None:
    response = live_server.post(path, body)
    assert 400 <= response.status_code < 500, response.text
    if field is not None:
        assert field in response.text


def test_oversized_body_gets_413(live_server: LiveServer) -> None:
    huge = json.dumps({"texts": ["x" * 1_000_000] * 20})
    response = live_server.post("/falsetrue", huge)
    assert response.status_code == 413
    assert "bytes" in response.json()["error"]


def test_client_mistakes_are_logged_as_one_line_without_traceback(live_server: LiveServer) -> None:
    marker_value = -123456.0
    response = live_server.post("/heatflow", {"sediment_thickness_m": [marker_value]})
    assert response.status_code == 400
    warning_lines = live_server.log_lines_with("client error on /heatflow")
    log = live_server.log()
    assert warning_lines, log[-2000:]
    assert all("WARNING" in line for line in warning_lines)
    assert "Traceback" not in log
    assert str(marker_value) not in log  # the input itself is not logged


def test_swagger_ui_and_openapi_document_are_served(live_server: LiveServer) -> None:
    assert live_server.get("/").status_code == 200
    document = live_server.get("/docs.json").json()
    assert {"/heatflow", "/falsetrue", "/models"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    heat = schemas["HeatFlowRequestIODescriptor"]["properties"]["sediment_thickness_m"]
    one, many = heat["anyOf"]
    assert many["maxItems"] == 1000 and heat["examples"] and one["type"] == "number"
