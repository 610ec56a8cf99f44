"""What the edge does with slow and heavy requests, on servers configured for it: a request
cut by BentoML's timeout is audited as the 504 its client got."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from despliegue.config import config_path
from tests.conftest import LiveServer, private_home, serve, stop_server
from tests.image_samples import b64, encode, photo

pytestmark = pytest.mark.integration

API_TIMEOUT_S = 1


def configured(folder: Path, old: str, new: str) -> Path:
    """configuration.yaml with one line changed, written to `folder`."""
    text = config_path().read_text(encoding="utf-8")
    assert old in text, old
    config = folder / "configuration.yaml"
    config.write_text(text.replace(old, new, 1), encoding="utf-8")
    return config


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
    config = configured(
        folder,
        "    Despliegue: {workers: 1}",
        f"    Despliegue: {{workers: 1, traffic: {{timeout: {API_TIMEOUT_S}}}}}",
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
    config = configured(
        folder, "  max_requests_in_flight: 128 ", f"  max_requests_in_flight: {IN_FLIGHT} "
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


def test_a_flood_of_large_photos_leaves_heatflow_its_places(
    small_worker_server: LiveServer,
) -> None:
    """16 clients keep /face busy with large photos (seconds each, more than the worker's 8
    places); meanwhile /heatflow is never shed: it answers 200 every time. How long it waits
    then depends on the machine and what else runs on it, so that is measured by
    `make bench-flood` (benchmarks/flood.py), not asserted here."""
    import asyncio
    import time

    import httpx

    server = small_worker_server
    body = json.dumps({"input_data": [large_photo(2500)] * 2}).encode()
    heat = json.dumps({"sediment_thickness_m": [1500.0]}).encode()
    headers = {**server.headers, "content-type": "application/json"}
    face_statuses: list[int] = []
    heat_statuses: list[int] = []

    async def flood(client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            answer = await client.post("/face", content=body, headers=headers)
            face_statuses.append(answer.status_code)
            if answer.status_code == 503:
                await asyncio.sleep(0.05)

    async def light(client: httpx.AsyncClient, until: float) -> None:
        await asyncio.sleep(3)  # the flood holds the worker's places by then
        while time.monotonic() < until:
            answer = await client.post("/heatflow", content=heat, headers=headers)
            heat_statuses.append(answer.status_code)
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        until = time.monotonic() + 20
        limits = httpx.Limits(max_connections=FLOODERS + 4)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            await asyncio.gather(
                *(flood(client, until) for _ in range(FLOODERS)), light(client, until)
            )

    asyncio.run(scenario())
    assert 503 in face_statuses, "the flood never filled the image places"
    assert len(heat_statuses) >= 20 and set(heat_statuses) == {200}, heat_statuses
