"""What the edge does with slow and heavy requests, on servers configured for it: a request
cut by BentoML's timeout is audited as the 504 its client got."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from benchmarks.servers import config_variant, few_places_config
from despliegue.config import config_path
from tests.conftest import LiveServer, private_home, serve, stop_server
from tests.image_samples import b64, encode, photo

pytestmark = pytest.mark.integration

API_TIMEOUT_S = 1


def large_photo(side: int = 4000) -> str:
    """The astronaut scaled up to `side` px, as Base64 JPEG: seconds of decoding, detection
    and (annotate) PNG encoding on this machine."""
    pixels = np.asarray(Image.fromarray(photo("astronaut")).resize((side, side)))
    return b64(encode(pixels, "JPEG", quality=85))


@pytest.fixture(scope="module")
def short_timeout_server(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The API service answers within `API_TIMEOUT_S` or BentoML cuts the request (504)."""
    folder = tmp_path_factory.mktemp("timeout")
    config = config_variant(
        config_path(),
        folder / "configuration.yaml",
        lambda raw: raw["bentoml"]["services"]["Despliegue"].update(
            traffic={"timeout": API_TIMEOUT_S}
        ),
    )
    server = serve(
        private_home(reference_store, folder),
        folder / "serve.log",
        {"DESPLIEGUE_CONFIG": str(config)},
    )
    try:
        yield server
    finally:
        stop_server(server.process)


def audit_line(server: LiveServer, request_id: str) -> dict:
    found = server.log_lines_with(f'"request_id": "{request_id}"')
    assert found, server.log()[-3000:]
    return json.loads(found[-1][found[-1].index("{") :])


def test_a_request_cut_by_the_timeout_is_audited_as_504(short_timeout_server: LiveServer) -> None:
    body = {"input_data": [large_photo()] * 3, "annotate": True}
    answer = short_timeout_server.post("/face", body, headers={"x-request-id": "cut-by-timeout"})
    assert answer.status_code == 504, answer.text[:300]
    line = audit_line(short_timeout_server, "cut-by-timeout")
    assert line["status"] == 504 and line["endpoint"] == "/face", line
    # A request answered in time is audited as it was answered.
    quick = short_timeout_server.post(
        "/heatflow", {"sediment_thickness_m": 1000}, headers={"x-request-id": "in-time"}
    )
    assert quick.status_code == 200, quick.text
    assert audit_line(short_timeout_server, "in-time")["status"] == 200


IN_FLIGHT = 8
FLOODERS = 16


@pytest.fixture(scope="module")
def small_worker_server(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """An API worker with few places (`limits.max_requests_in_flight`), so a flood fills them."""
    folder = tmp_path_factory.mktemp("admission")
    config = few_places_config(config_path(), folder / "configuration.yaml", IN_FLIGHT)
    server = serve(
        private_home(reference_store, folder),
        folder / "serve.log",
        {"DESPLIEGUE_CONFIG": str(config)},
    )
    try:
        yield server
    finally:
        stop_server(server.process)


def test_a_flood_of_large_photos_leaves_heatflow_its_places(
    small_worker_server: LiveServer,
) -> None:
    """16 clients keep /face busy with large photos (seconds each, more than the worker's 8
    places); meanwhile /heatflow is never shed: it answers 200 every time. How long it waits
    then depends on the machine and what else runs on it, so that is measured by
    `make bench-flood` (benchmarks/flood.py), not asserted here."""
    import asyncio

    from benchmarks.flood import large_photo_body, phase

    server = small_worker_server
    outcome = asyncio.run(
        phase(server.url, 17, FLOODERS, large_photo_body(2500), headers=server.headers)
    )
    assert "503" in outcome["face_statuses"], "the flood never filled the image places"
    heat_statuses = outcome["heatflow"]["statuses"]
    assert set(heat_statuses) == {"200"} and heat_statuses["200"] >= 20, heat_statuses
