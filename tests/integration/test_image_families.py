"""/flowers, /face and /super through the real `bentoml serve`, on photos packages ship."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer
from tests.image_samples import TEXT_CALLED_JPG, b64, encode, photo, png_bomb, truncated_png
from tests.integration.test_concurrency import batch_histogram

pytestmark = pytest.mark.integration

FLOWER_IDS = {41, 43, 46, 51, 58, 73, 74, 75, 77, 78, 80, 81, 82, 83, 88, 89, 94, 95}


def jpeg(name: str) -> str:
    return b64(encode(photo(name), "JPEG", quality=90))


def test_face_finds_the_astronaut_where_she_is_and_nothing_in_the_coffee(
    live_server: LiveServer,
) -> None:
    response = live_server.post("/face", {"input_data": [jpeg("astronaut"), jpeg("coffee")]})
    assert response.status_code == 200, response.text
    astronaut, coffee = response.json()["images"]
    (face,) = astronaut["faces"]
    box = face["box"]
    # Her face spans about x 180-270, y 60-175 in the 512x512 photo: the box's centre lies
    # between her eyes and mouth, and the box is face-sized.
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert 200 < centre[0] < 250 and 95 < centre[1] < 140, box
    assert 60 < box["width"] < 130 and 70 < box["height"] < 150, box
    assert face["confidence"] >= 0.9
    left_eye, right_eye = face["landmarks"]["left_eye"], face["landmarks"]["right_eye"]
    assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 15
    assert coffee["faces"] == []
    assert response.json()["model"].startswith("face_detector:")


def test_face_accepts_the_seeds_single_base64_string(live_server: LiveServer) -> None:
    response = live_server.post("/face", {"input_data": jpeg("camera")})
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    assert len(image["faces"]) == 1 and image["annotated_png"] is None


def test_super_validates_the_face_with_its_coordinates(live_server: LiveServer) -> None:
    response = live_server.post(
        "/super",
        {"input_data": [jpeg("astronaut"), jpeg("chelsea"), jpeg("camera")], "annotate": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    astronaut, cat, cameraman = body["images"]
    assert cameraman["result"] is True and len(cameraman["faces"]) == 1
    # Images of different sizes share one request (and batch); the cameraman's face must be
    # where it is in his own photo (about x 197-256, y 117-199), not shifted by padding.
    box = cameraman["faces"][0]["box"]
    assert 200 < box["x"] + box["width"] / 2 < 255 and 130 < box["y"] + box["height"] / 2 < 185
    assert astronaut["result"] is True and astronaut["score"] >= body["threshold"]
    (face,) = astronaut["faces"]
    assert set(face["box"]) == {"x", "y", "width", "height"} and face["result"] is True
    assert cat == {**cat, "result": False, "score": 0.0, "faces": []}
    drawn = Image.open(io.BytesIO(base64.b64decode(astronaut["annotated_png"])))
    assert drawn.format == "PNG" and drawn.size == (512, 512)
    assert body["model"].startswith("face_validator:")
    assert body["detector"].startswith("face_detector:")


def test_flowers_answers_every_image_of_a_batch(live_server: LiveServer) -> None:
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    images = [b64(encode(china, "JPEG")), b64(encode(flower, "JPEG")), jpeg("coffee")]
    response = live_server.post("/flowers", {"images": images, "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 3
    for answer in body["predictions"]:
        assert len(answer["top_k"]) == 5
        assert {entry["class_id"] for entry in answer["top_k"]} <= FLOWER_IDS
        confidences = [entry["confidence"] for entry in answer["top_k"]]
        assert confidences == sorted(confidences, reverse=True)
        if answer["confidence"] >= body["threshold"]:
            assert answer["class_id"] in FLOWER_IDS and answer["name"] != "Flor no identificada"
        else:
            assert answer["class_id"] is None and answer["name"] == "Flor no identificada"
    assert body["model"].startswith("flower_classifier:")


def test_flowers_recognises_the_reference_models_own_kind_of_image(
    live_server: LiveServer,
) -> None:
    from despliegue.families.flowers import CLASSES, draw_flower

    rng = np.random.default_rng(7)
    images = [b64(encode(draw_flower(rng, index))) for index in range(0, 18, 3)]
    response = live_server.post("/flowers", {"images": images, "top_k": 18})
    assert response.status_code == 200, response.text
    named = [answer["top_k"][0]["class_id"] for answer in response.json()["predictions"]]
    expected = [CLASSES[index]["id"] for index in range(0, 18, 3)]
    assert sum(a == b for a, b in zip(named, expected, strict=True)) >= 4, (named, expected)


HOSTILE = {
    "truncated-png": b64(truncated_png()),
    "text-as-jpg": b64(TEXT_CALLED_JPG),
    "bomb-20000x20000": b64(png_bomb(20000)),
    "bad-base64": "data:image/png;base64,%%%not-base64%%%",
}


@pytest.mark.parametrize("path", ["/flowers", "/face", "/super"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_image_gets_a_4xx_naming_it(live_server: LiveServer, path: str, case: str) -> None:
    field = "images" if path == "/flowers" else "input_data"
    response = live_server.post(path, {field: [jpeg("camera"), HOSTILE[case]]})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == [field, 1]
    assert response.json()["error"].startswith(f"{field}.1: ")


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/flowers", {"images": []}, ["images"]),
        ("/face", {"input_data": []}, ["input_data"]),
        ("/super", {"input_data": ["QUJD"] * 17}, ["input_data"]),
        ("/flowers", {"images": ["QUJD"] * 17}, ["images"]),
        ("/flowers", {"images": [jpeg("camera")], "top_k": 0}, ["top_k"]),
        ("/face", {"input_data": jpeg("camera"), "annotate": "yes"}, ["annotate"]),
    ],
    ids=[
        "flowers-empty",
        "face-empty",
        "super-too-many",
        "flowers-too-many",
        "top-k-0",
        "bad-flag",
    ],
)
def test_bad_lists_and_fields_get_a_400_naming_the_field(
    live_server: LiveServer, path: str, body: dict, loc: list
) -> None:
    response = live_server.post(path, body)
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"][: len(loc)] == loc


async def fire(server: LiveServer, path: str, body: dict, requests: int) -> list[int]:
    async with server.async_client() as client:
        replies = await asyncio.gather(*(client.post(path, json=body) for _ in range(requests)))
    return [reply.status_code for reply in replies]


@pytest.mark.parametrize(
    ("path", "field", "methods"),
    [("/flowers", "images", ("classify",)), ("/super", "input_data", ("detect", "validate"))],
)
def test_concurrent_image_requests_are_batched(
    live_server: LiveServer, path: str, field: str, methods: tuple[str, ...]
) -> None:
    requests = 24
    before = {method: batch_histogram(live_server, method) for method in methods}
    statuses = asyncio.run(fire(live_server, path, {field: [jpeg("astronaut")]}, requests))
    assert statuses == [200] * requests
    for method in methods:
        after_sum, after_count = batch_histogram(live_server, method)
        items = after_sum - before[method][0]
        batches = after_count - before[method][1]
        assert items == requests, method  # one image (one face) per request went through
        assert batches < requests, f"{method}: no two requests ever shared a batch"


def upload(name: str) -> tuple[str, bytes, str]:
    return (f"{name}.jpg", encode(photo(name), "JPEG"), "image/jpeg")


def test_upload_endpoints_take_files_like_the_swagger_ui_sends(live_server: LiveServer) -> None:
    faces = live_server.upload("/face/upload", [("input_data", upload("astronaut"))])
    assert faces.status_code == 200, faces.text
    assert len(faces.json()["images"][0]["faces"]) == 1
    verdict = live_server.upload(
        "/super/upload", [("input_data", upload("astronaut"))], data={"annotate": "true"}
    )
    assert verdict.status_code == 200, verdict.text
    assert verdict.json()["images"][0]["result"] is True
    assert verdict.json()["images"][0]["annotated_png"]
    files = [("images", upload("coffee")), ("images", upload("chelsea"))]
    flowers = live_server.upload("/flowers/upload", files, data={"top_k": "2"})
    assert flowers.status_code == 200, flowers.text
    assert [len(p["top_k"]) for p in flowers.json()["predictions"]] == [2, 2]


@pytest.mark.parametrize("case", ["text-as-jpg", "bomb-20000x20000"])
def test_uploaded_hostile_file_gets_a_4xx_naming_it(live_server: LiveServer, case: str) -> None:
    raw = base64.b64decode(HOSTILE[case])
    files = [("images", upload("camera")), ("images", ("photo.jpg", raw, "image/jpeg"))]
    response = live_server.upload("/flowers/upload", files)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["images", 1]


@pytest.mark.parametrize(
    ("path", "field"), [("/flowers/upload", "images"), ("/face/upload", "input_data")]
)
def test_upload_field_sent_as_text_is_refused_not_fetched(
    live_server: LiveServer, path: str, field: str
) -> None:
    """BentoML would read a text value in a file field as a URL and download it server-side."""
    url = f"{live_server.url}/models"
    response = httpx.post(
        f"{live_server.url}{path}",
        data={field: url},
        files=[("unused", ("x", b"", "text/plain"))],
        headers=live_server.headers,
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == [field, 0]
    assert "uploaded file" in response.json()["detail"][0]["msg"]


def test_swagger_document_offers_a_file_upload(live_server: LiveServer) -> None:
    paths = live_server.get("/docs.json").json()["paths"]
    for path in ("/flowers/upload", "/face/upload", "/super/upload"):
        assert "multipart/form-data" in paths[path]["post"]["requestBody"]["content"], path
    for path in ("/flowers", "/face", "/super"):
        assert "application/json" in paths[path]["post"]["requestBody"]["content"], path
