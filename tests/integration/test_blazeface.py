"""The fast face detector as save_models.py stores it and the face runner loads it: BlazeFace's
.tflite out of the mediapipe wheel, verified against its manifest, answering as MTCNN does."""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
import pytest
from skimage import data

from benchmarks.faces_quality import PHOTO_FACES, iou
from despliegue.artifacts import ModelUnusable, load_artifact
from despliegue.contracts import LANDMARKS
from tests.conftest import run_save_models


@pytest.fixture(scope="module")
def stored(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> bentoml.Model:
    """BlazeFace is an optional reference: built when asked for by name. The wheel it comes out
    of is downloaded into a temporary folder, which is gone once the model is stored."""
    scratch = tmp_path_factory.mktemp("save-tmp")
    built = run_save_models(
        "reference", "face_detector_blazeface", extra_env={"TMPDIR": str(scratch)}
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert not list(scratch.iterdir()), "save_models.py left files in its temporary folder"
    return bentoml.models.get("face_detector_blazeface:latest")


def test_the_stored_detector_finds_the_astronaut_and_nothing_in_the_coffee(stored) -> None:
    assert stored.info.metadata["framework"] == "blazeface"
    detector = load_artifact(stored)
    astronaut, coffee = data.astronaut()[..., :3], data.coffee()
    found, nothing = detector.detect_faces([astronaut, coffee])
    faces = [face for face in found if face["confidence"] >= 0.5]
    assert len(faces) == 1, found
    assert iou(faces[0]["box"], PHOTO_FACES["astronaut"]) >= 0.3
    assert set(faces[0]["keypoints"]) == set(LANDMARKS)
    assert not [face for face in nothing if face["confidence"] >= 0.5], nothing


def test_an_altered_weight_file_stops_the_load(stored) -> None:
    manifest = json.loads(Path(stored.path_of("blazeface.json")).read_text())
    weights = Path(stored.path_of(manifest["weights"][manifest["variant"]]["file"]))
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ModelUnusable, match="sha256"):
            load_artifact(stored)
    finally:
        weights.write_bytes(original)
    assert load_artifact(stored).detect_faces([data.astronaut()[..., :3]])[0]
