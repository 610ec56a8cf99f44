"""The Open Inference Protocol's wire format (despliegue/v2/protocol.py) and its token scopes
(despliegue/v2/naming.py), without a server: JSON and binary tensors in and out, and every
refusal naming the tensor and the rule."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from despliegue.config import settings
from despliegue.http.auth import required_scope
from despliegue.v2.naming import model_key, v2_scope
from despliegue.v2.protocol import (
    InferRequest,
    Output,
    V2Error,
    encode_response,
    parse_infer_request,
)


def binary_body(document: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, str]:
    header = json.dumps(document).encode()
    return header + b"".join(chunks), str(len(header))


def test_json_tensors_flat_or_nested() -> None:
    body = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["año", "b"]},
            ],
            "parameters": {"top_k": 2},
        }
    ).encode()
    request = parse_infer_request(body, None)
    assert request.inputs["x"].dtype == np.float32
    assert request.inputs["x"].tolist() == [[1, 2], [3, 4]]
    assert request.inputs["t"].tolist() == ["año".encode(), b"b"]
    assert request.request_id == "7" and request.parameters == {"top_k": 2}


def test_binary_tensors_as_tritonclient_sends_them() -> None:
    values = np.array([250.0, 1500.0], dtype=np.float64)
    texts = b"".join(struct.pack("<I", len(t)) + t for t in (b"hola", b"\xff\xd8jpeg"))
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "v",
                    "datatype": "FP64",
                    "shape": [2],
                    "parameters": {"binary_data_size": 16},
                },
                {
                    "name": "t",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(texts)},
                },
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        },
        [values.tobytes(), texts],
    )
    request = parse_infer_request(body, length)
    assert request.inputs["v"].tolist() == [250.0, 1500.0]
    assert request.inputs["t"].tolist() == [b"hola", b"\xff\xd8jpeg"]
    assert request.outputs == ["y"] and request.binary_outputs == {"y"}


def test_a_header_length_counted_in_characters_still_reads_a_json_only_body() -> None:
    """The kserve SDK sends the length in characters: non-ASCII text makes it too short."""
    document = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["publicó"]}]}
    text = json.dumps(document, ensure_ascii=False)
    request = parse_infer_request(text.encode(), str(len(text)))
    assert request.inputs["t"].tolist() == ["publicó".encode()]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"inputs": []}, "inputs: a non-empty list"),
        ({"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}, "x: datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}]}, "x: shape"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}, "x: shape"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": ["a"]}]}, "x: INT64"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}, "x: BYTES"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "x: no `data`"),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            "x: binary_data_size 8 runs past",
        ),
    ],
)
def test_refusals_name_the_tensor_and_the_rule(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(V2Error) as refused:
        parse_infer_request(json.dumps(raw).encode(), None)
    body = json.loads(refused.value.to_response().body)
    assert refused.value.status == 400
    assert body["error"].startswith(error), body


def test_a_wrong_binary_size_is_refused() -> None:
    tensor = {"name": "v", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 8}}
    body, length = binary_body({"inputs": [tensor]}, [b"\x00" * 8])
    with pytest.raises(V2Error, match="takes 16 bytes"):
        parse_infer_request(body, length)


def test_outputs_in_json_or_binary_as_asked() -> None:
    outputs = [
        Output("y", "FP64", np.array([1.5, 2.5])),
        Output("name", "BYTES", np.array([b"rosa", "año".encode()], dtype=object)),
    ]
    request = InferRequest(inputs={}, datatypes={}, request_id="9", binary_outputs={"name"})
    body, headers = encode_response("m", "v1", request, outputs)
    length = int(headers["inference-header-content-length"])
    header = json.loads(body[:length])
    assert header["id"] == "9" and header["model_version"] == "v1"
    assert header["outputs"][0]["data"] == [1.5, 2.5]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 4 + 4 + 4 + 4}
    assert body[length:] == struct.pack("<I", 4) + b"rosa" + struct.pack("<I", 4) + "año".encode()

    only_json, headers = encode_response("m", "v1", InferRequest({}, {}, outputs=["y"]), outputs)
    assert headers == {"content-type": "application/json"}
    assert [o["name"] for o in json.loads(only_json)["outputs"]] == ["y"]
    with pytest.raises(V2Error, match="'z' is not an output"):
        encode_response("m", "v1", InferRequest({}, {}, outputs=["z"]), outputs)


def test_token_scopes_follow_the_seed_endpoint_a_model_answers_like() -> None:
    auth = settings().security.auth
    assert required_scope("/v2/models/heatflow_svr/infer", auth) == "heatflow"
    assert required_scope("/v2/models/heatflow_svr/versions/abc/infer", auth) == "heatflow"
    assert required_scope("/v2/models/modelo_CAZ_NM", auth) == "antibiotics"
    assert required_scope("/v2/models/face_validator/ready", auth) == "super"
    assert required_scope("/v2/models/unknown/infer", auth) == "any"
    assert required_scope("/v2", auth) == "any"
    assert v2_scope("/v2/health/ready") is None and v2_scope("/v2/health/live") is None
    assert model_key("MODELO_amk_nm") == "antibiotics" and model_key("heatflow") is None


def test_v2_infer_calls_count_in_the_in_flight_limit_as_their_family() -> None:
    """The real InFlightLimit with the stack's path and class sets: two flower infer calls hold
    the images share (2 places), a third is refused naming the setting, while a heat-flow infer
    call still gets a place; a path that is no served model's infer is not counted."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from despliegue.http.guards import InFlightLimit
    from despliegue.v2.naming import WithInferClasses, WithInferPaths

    release = asyncio.Event()

    async def slow(request: Request) -> JSONResponse:
        await release.wait()
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v2/models/{name}/infer", slow, methods=["POST"])])
    app.add_middleware(
        InFlightLimit,
        max_in_flight=4,
        paths=WithInferPaths({"/flowers"}),
        classes=WithInferClasses({"/flowers": "images"}),
        class_limits={"images": 2},
    )
    assert "/v2/models/modelo_AMK_NM/versions/abc/infer" in WithInferPaths(set())
    assert "/v2/models/nope/infer" not in WithInferPaths(set())
    assert "/v2/models/heatflow_svr" not in WithInferPaths(set())

    def in_flight() -> int:
        layer = app.middleware_stack  # built on the first request
        while layer is not None and not isinstance(layer, InFlightLimit):
            layer = getattr(layer, "app", None)
        return layer.in_flight if layer is not None else 0

    async def until_in_flight(count: int) -> None:
        for _ in range(500):  # at most 5 s
            if in_flight() == count:
                return
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            flowers = [
                asyncio.create_task(client.post("/v2/models/flower_classifier/infer"))
                for _ in range(2)
            ]
            await until_in_flight(2)
            refused = await asyncio.wait_for(
                client.post("/v2/models/flower_classifier/infer"), timeout=5
            )
            assert refused.status_code == 503
            assert "limits.in_flight_share.images" in refused.json()["error"]
            light = asyncio.create_task(client.post("/v2/models/heatflow_svr/infer"))
            await until_in_flight(3)
            assert not light.done()  # admitted, waiting inside the app
            release.set()
            answers = await asyncio.gather(*flowers, light)
            assert [answer.status_code for answer in answers] == [200] * 3

    asyncio.run(scenario())
