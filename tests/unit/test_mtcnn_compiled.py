"""MTCNN on compiled networks (despliegue/mtcnn_compiled.py): its three ONNX exports are kept
only when they answer like mtcnn's TensorFlow networks, the detector then finds what mtcnn
1.0.0 on TensorFlow finds on the offline face set (benchmarks/faces_quality.py), serving it
needs no TensorFlow, and an export changed since it was checked is left to TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.faces_quality import iou, match, scenes
from despliegue.mtcnn_compiled import (
    STAGES,
    TOLERANCE,
    compile_beside,
    load_compiled,
    serving_runtime,
)
from tests.conftest import ROOT, fresh_interpreter_json, run_save_models

MIN_IOU = 0.9
MAX_LANDMARK_PX = 2
CONFIDENT = 0.9


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A detector folder as the reference build stores it (the package's weight files and a
    manifest), compiled beside: (folder, the card's `compiled` entry)."""
    folder = tmp_path_factory.mktemp("face_detector")
    weights = resources.files("mtcnn.assets.weights")
    for stage in STAGES:
        shutil.copyfile(str(weights / f"{stage}.lz4"), folder / f"{stage}.lz4")
    manifest = folder / "mtcnn.json"
    entries = {stage: {"file": f"{stage}.lz4"} for stage in STAGES}
    manifest.write_text(json.dumps({"package": "mtcnn", "weights": entries}), encoding="utf-8")
    return folder, compile_beside(manifest)


def tensorflow_mtcnn(folder: Path) -> Any:
    from despliegue.artifacts import _load_mtcnn

    return _load_mtcnn(folder / "mtcnn.json")


def test_exports_are_checked_against_tensorflow(stored: tuple[Path, dict[str, Any]]) -> None:
    folder, compiled = stored
    assert compiled["runtime"] == "onnxruntime", compiled.get("reason")
    assert compiled["max_abs_difference"] <= TOLERANCE
    assert set(compiled["max_abs_difference_by_network"]) == set(STAGES)
    assert compiled["tf2onnx_version"] and compiled["runtime_version"]
    for stage in STAGES:
        assert (folder / compiled["files"][stage]["file"]).is_file()
    assert serving_runtime({"compiled": compiled}, folder, enabled=True)[0] == "onnxruntime"
    assert serving_runtime({"compiled": compiled}, folder, enabled=False)[0] == "tensorflow"


def test_same_detections_as_mtcnn_on_the_face_set(stored: tuple[Path, dict[str, Any]]) -> None:
    folder, compiled = stored
    reference, detector = tensorflow_mtcnn(folder), load_compiled(folder, compiled)
    found = {"tensorflow": 0, "compiled": 0}
    for name, image, truth in scenes():
        expected = reference.detect_faces([image])[0]
        answered = detector.detect_faces([image])[0]
        assert len(answered) == len(expected), name
        for face in expected:
            twin = max(answered, key=lambda other: iou(face["box"], other["box"]))
            assert iou(face["box"], twin["box"]) >= MIN_IOU, (name, face, twin)
            for point, (x, y) in face["keypoints"].items():
                tx, ty = twin["keypoints"][point]
                assert max(abs(x - tx), abs(y - ty)) <= MAX_LANDMARK_PX, (name, point)
            assert twin["confidence"] == pytest.approx(face["confidence"], abs=1e-3)
        for key, faces in (("tensorflow", expected), ("compiled", answered)):
            found[key] += match([f["box"] for f in faces if f["confidence"] >= CONFIDENT], truth)
    assert found["compiled"] == found["tensorflow"] > 0


def test_a_batch_answers_each_image_as_alone(stored: tuple[Path, dict[str, Any]]) -> None:
    """The pyramid, crops and NMS run over the whole batch; no image sees another's faces."""
    detector = load_compiled(*stored)
    images = [image for _, image, _ in scenes()[:6]]
    small = np.ascontiguousarray(images[0][:300, :400])  # another size in the same call
    alone = [detector.detect_faces([image])[0] for image in [*images, small]]
    together = detector.detect_faces([*images, small])
    assert sum(len(faces) for faces in alone) > 0
    for expected, answered in zip(alone, together, strict=True):
        # Boxes and landmarks exactly; scores to float noise (the runtime may sum a batch's
        # rows in another order).
        assert [(f["box"], f["keypoints"]) for f in answered] == [
            (f["box"], f["keypoints"]) for f in expected
        ]
        assert [f["confidence"] for f in answered] == pytest.approx(
            [f["confidence"] for f in expected], abs=1e-5
        )


def test_an_altered_export_is_refused_back_to_tensorflow(
    stored: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    source, compiled = stored
    folder = tmp_path / "face_detector"
    shutil.copytree(source, folder)
    exported = folder / compiled["files"]["pnet"]["file"]
    graph = onnx.load(exported)
    for weights in graph.graph.initializer:  # every float weight shifted: a damaged file
        if weights.data_type == onnx.TensorProto.FLOAT:
            altered = numpy_helper.to_array(weights) + 0.5
            weights.CopyFrom(numpy_helper.from_array(altered.astype(np.float32), weights.name))
    onnx.save(graph, exported)

    runtime, reason = serving_runtime({"compiled": compiled}, folder, enabled=True)
    assert runtime == "tensorflow"
    assert "pnet.onnx" in reason and "sha256" in reason


def test_serving_the_exports_imports_no_tensorflow(stored: tuple[Path, dict[str, Any]]) -> None:
    folder, compiled = stored
    script = f"""
import json, sys
from pathlib import Path
from skimage import data
from despliegue.mtcnn_compiled import load_compiled
detector = load_compiled(Path({str(folder)!r}), json.loads({json.dumps(compiled)!r}))
faces = detector.detect_faces([data.astronaut()])[0]
print(json.dumps({{"faces": len(faces), "tensorflow": "tensorflow" in sys.modules,
                  "mtcnn": "mtcnn" in sys.modules, "keras": "keras" in sys.modules}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"faces": 1, "tensorflow": False, "mtcnn": False, "keras": False}


# Loads the stored detector as the face runner does, in a fresh interpreter.
SERVE = """
import json, sys
import bentoml
from skimage import data
from despliegue.artifacts import load_artifact, model_card
stored = bentoml.models.get("face_detector:latest")
card = model_card(stored)
faces = load_artifact(stored).detect_faces([data.astronaut()])[0]
print(json.dumps({"runtime": card.runtime, "reason": card.runtime_reason,
                  "tensorflow": "tensorflow" in sys.modules,
                  "boxes": [face["box"] for face in faces]}))
"""


def served(home: Path) -> dict[str, Any]:
    return fresh_interpreter_json(SERVE, home)


@pytest.mark.processes
def test_the_reference_detector_is_served_compiled_until_an_export_changes(
    tmp_path: Path,
) -> None:
    """The reference build compiles the detector; the runner's load needs no TensorFlow and
    finds the astronaut's face as mtcnn does; a changed export falls back to TensorFlow."""
    home = tmp_path / "bentoml"
    result = run_save_models("reference", "face_detector", home=str(home))
    assert result.returncode == 0, result.stderr
    assert "served by onnxruntime" in " ".join(result.stdout.split())

    compiled = served(home)
    assert compiled["runtime"] == "onnxruntime", compiled["reason"]
    assert not compiled["tensorflow"]
    assert len(compiled["boxes"]) == 1

    (exported,) = home.glob("models/face_detector/*/onet.onnx")
    exported.write_bytes(exported.read_bytes() + b"\0")
    fallback = served(home)
    assert fallback["runtime"] == "tensorflow" and "sha256 differs" in fallback["reason"]
    assert fallback["tensorflow"]
    assert fallback["boxes"] == compiled["boxes"]
