"""One error body: every writer produces what the OpenAPI document's ErrorBody schema says."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from despliegue.errors import (
    ClientError,
    ErrorBody,
    error_body,
    error_json,
    in_our_words,
    reworded,
)
from despliegue.http.docs import error_schemas
from despliegue.http.guards import ControlCharacterPaths, MethodNotAllowed, send_client_error


def validator() -> Draft202012Validator:
    """ErrorBody as the OpenAPI document holds it, its references resolved in the document."""
    document = {"components": {"schemas": error_schemas()}}
    return Draft202012Validator({"$ref": "#/components/schemas/ErrorBody", **document})


def sent_body(call: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(call(send))
    return json.loads(b"".join(m.get("body", b"") for m in messages if "body" in m))


async def _never(*_: Any) -> None:
    raise AssertionError("the app behind must not be called")


BODIES = {
    "ClientError": lambda: json.loads(ClientError(["codes", 1], "unknown").to_response().body),
    "send_client_error": lambda: sent_body(
        lambda send: send_client_error(
            {"type": "http"}, send, 413, ["body"], "too big", "too_large"
        )
    ),
    "MethodNotAllowed": lambda: sent_body(
        lambda send: MethodNotAllowed(_never, {"/x": frozenset({"GET"})})(
            {"type": "http", "path": "/x", "method": "PUT"}, _never, send
        )
    ),
    "reworded BentoML": lambda: json.loads(
        error_json(
            reworded(
                {
                    "error": "1 validation error for HeatFlowRequestIODescriptor",
                    "detail": [
                        {"type": "float_parsing", "loc": ["x", 0], "msg": "bad", "url": "u"}
                    ],
                }
            )
        )
    ),
    "reworded list": lambda: json.loads(error_json(reworded([{"error": "Not Found"}]))),
    "router's plain-text 404": lambda: json.loads(error_json(in_our_words(404, b"Not Found"))),
    "FastAPI's detail": lambda: json.loads(error_json(in_our_words(404, b'{"detail": "x"}'))),
    "other plain-text 4xx": lambda: json.loads(error_json(in_our_words(400, b"Bad thing"))),
    "ControlCharacterPaths": lambda: sent_body(
        lambda send: ControlCharacterPaths(_never)(
            {"type": "http", "path": "/heatflow\n", "method": "POST"}, _never, send
        )
    ),
}


@pytest.mark.parametrize("writer", BODIES)
def test_every_writer_answers_the_documented_body(writer: str) -> None:
    body = BODIES[writer]()
    validator().validate(body)
    ErrorBody.model_validate(body)
    assert body["error"], writer


def test_the_body_names_the_field_and_the_rule() -> None:
    body = json.loads(error_body(["features", 2], "expects 16 values", "value_error"))
    assert body == {
        "error": "features.2: expects 16 values",
        "detail": [{"loc": ["features", 2], "msg": "expects 16 values", "type": "value_error"}],
    }
    named = json.loads(error_body(["authorization"], "missing", "auth", field="token"))
    assert named["error"] == "token: missing"


def test_the_schema_refuses_a_body_of_another_shape() -> None:
    errors = list(validator().iter_errors({"message": "oops"}))
    assert errors


def test_bodies_already_in_our_words_are_left_alone() -> None:
    ours = error_body(["family"], "unknown family 'x'", "value_error")
    assert in_our_words(404, ours) is None
    assert in_our_words(404, b"") is None  # a HEAD answer has no body to reword
    fastapi_422 = b'{"detail": [{"loc": ["query", "x"], "msg": "m", "type": "t"}]}'
    assert in_our_words(422, fastapi_422) is None
