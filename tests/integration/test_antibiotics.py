"""The antibiotic panel through the real `bentoml serve`, on the reference panel."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import LiveServer
from tests.integration.test_concurrency import batch_histogram

pytestmark = pytest.mark.integration

REFERENCE_CODES = ["AMK", "AMP", "ATM", "CAS", "CAZ"]
VECTOR = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]


def test_panel_lists_every_reference_antibiotic(live_server: LiveServer) -> None:
    response = live_server.get("/antibiotics")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_pattern"] == "modelo_{code}_NM"
    assert [entry["code"] for entry in body["antibiotics"]] == REFERENCE_CODES
    for entry in body["antibiotics"]:
        assert entry["model"].startswith(f"modelo_{entry['code'].lower()}_nm:")
        assert entry["input_length"] == 16 and entry["classes"] == ["S", "I", "R"]
        assert entry["reference"] is True and entry["preprocessing"] == "standardize"


def test_whole_panel_answers_every_vector(live_server: LiveServer) -> None:
    second = [1] * 16
    response = live_server.post("/antibiotics", {"features": [VECTOR, second]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["code"] for result in results] == REFERENCE_CODES
    for result in results:
        assert result["model"] == f"modelo_{result['code'].lower()}_nm:{result['version']}"
        assert len(result["predictions"]) == 2
        for prediction in result["predictions"]:
            probabilities = prediction["probabilities"]
            assert list(probabilities) == ["S", "I", "R"]
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
            assert prediction["predicted_class"] == max(probabilities, key=probabilities.get)


def test_one_vector_and_chosen_codes(live_server: LiveServer) -> None:
    response = live_server.post("/antibiotics", {"features": VECTOR, "codes": ["CAZ", "AMK"]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["code"] for result in results] == ["CAZ", "AMK"]
    assert all(len(result["predictions"]) == 1 for result in results)


@pytest.mark.parametrize(
    ("body", "status", "loc", "words"),
    [
        ({"features": [1.0, 2.0], "codes": ["AMK"]}, 422, ["features", 0], ["modelo_amk_nm", "16"]),
        ({"features": [VECTOR, [1.0]]}, 422, ["features", 1], ["same length", "16", "1"]),
        (
            {"features": VECTOR, "codes": ["AMK", "XYZ"]},
            422,
            ["codes", 1],
            ["unknown antibiotic 'XYZ'", "AMK, AMP, ATM, CAS, CAZ"],
        ),
        ({"features": VECTOR, "codes": []}, 400, ["codes"], ["at least 1"]),
        ({"features": VECTOR, "codes": ["amk"]}, 400, ["codes", 0], ["pattern"]),
        ({"features": []}, 400, ["features"], ["at least 1"]),
        ({"features": [[]]}, 400, ["features", 0], ["at least 1"]),
        ({"features": VECTOR, "extra": 1}, 400, ["extra"], ["not permitted"]),
    ],
    ids=[
        "short",
        "ragged",
        "unknown-code",
        "empty-codes",
        "lowercase",
        "no-vectors",
        "empty-vector",
        "extra-field",
    ],
)
def test_bad_requests_name_the_field_and_rule(
    live_server: LiveServer, body: dict, status: int, loc: list, words: list[str]
) -> None:
    response = live_server.post("/antibiotics", body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert any(item["loc"] == loc for item in detail), detail
    for word in words:
        assert word in response.text


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_features_are_refused(live_server: LiveServer, value: str) -> None:
    response = live_server.post("/antibiotics", f'{{"features": [{value}, 0, 1]}}')
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["features", 0, 0]
    assert "finite" in response.text


def test_served_models_include_the_panel(live_server: LiveServer) -> None:
    models = live_server.get("/models").json()["models"]
    panel = [model for model in models if model["family"] == "antibiotics"]
    assert sorted(model["metadata"]["code"] for model in panel) == REFERENCE_CODES
    assert all(model["labels"]["reference"] == "true" for model in panel)
    for model in panel:  # the runtime serving each, as checked when it was stored, and why
        compiled = model["metadata"].get("compiled") or {}
        expected = "onnxruntime" if compiled.get("runtime") == "onnxruntime" else "tensorflow"
        assert model["runtime"] == expected and model["runtime_reason"], model["tag"]


def test_concurrent_requests_answer_and_share_batches(live_server: LiveServer) -> None:
    async def call_many() -> list[int]:
        async with live_server.async_client() as client:
            calls = [
                client.post("/antibiotics", json={"features": VECTOR, "codes": [code]})
                for code in REFERENCE_CODES * 12
            ]
            return [response.status_code for response in await asyncio.gather(*calls)]

    before_rows, before_batches = batch_histogram(live_server, "susceptibility")
    assert asyncio.run(call_many()) == [200] * 60
    after_rows, after_batches = batch_histogram(live_server, "susceptibility")
    assert after_rows - before_rows == 60  # one row per request, all through the batcher
    assert after_batches - before_batches < 60, "no two requests ever shared a batch"
