"""BlazeFace, the fast face detector: MediaPipe's TFLite networks run by TensorFlow's own
`tf.lite.Interpreter`, answering as the mtcnn package's `MTCNN.detect_faces` does, so the
face runner serves either detector from configuration alone (`face_detector.model`).

Weights: `face_detection_full_range_sparse.tflite` (faces near and far, 192x192 input) and
`face_detection_short_range.tflite` (faces within ~2 m, 128x128), shipped in the
`mediapipe==0.10.14` wheel (later wheels ship no models). save_models.py, when this detector
is configured or named, downloads that wheel with pip and copies the .tflite files into the
model store beside a manifest with their sha256 (mediapipe itself is never installed: its
protobuf pin conflicts with TensorFlow's).

Decoding follows MediaPipe's graph (face_detection_*.pbtxt): SSD anchors with fixed size,
box and six keypoints relative to the anchor centre, sigmoid scores, then weighted
non-maximum suppression (overlapping boxes averaged by score). The image is padded to a
square first (MediaPipe's letterbox), so faces keep their shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from despliegue.images import resize


@dataclass(frozen=True)
class Variant:
    """One BlazeFace network and its decoding options (MediaPipe's calculator options)."""

    file: str
    input_size: int
    strides: tuple[int, ...]  # one per anchor layer
    anchors_per_layer: int  # 2 with an interpolated scale, 1 without
    min_score: float


VARIANTS = {
    "full_range": Variant("face_detection_full_range_sparse.tflite", 192, (4,), 1, 0.6),
    "short_range": Variant("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
}
SUPPRESSION_IOU = 0.3  # MediaPipe's min_suppression_threshold


def anchors(input_size: int, strides: Sequence[int], per_layer: int) -> np.ndarray:
    """Anchor centres (x, y) in [0, 1], in the networks' output order: per grid, cells
    row-major, `per_layer` anchors per cell for each layer; consecutive layers with the same
    stride share one grid, so their anchors sit together (MediaPipe's SsdAnchorsCalculator
    with fixed anchor size: only the centres matter)."""
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        stride, per_cell = strides[layer], 0
        while layer < len(strides) and strides[layer] == stride:
            per_cell += per_layer
            layer += 1
        cells = -(-input_size // stride)
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(centres, dtype=np.float32)


class BlazeFace:
    """`detect_faces(images)` -> per image, a list of {"box": [x, y, w, h], "confidence",
    "keypoints": {left_eye, right_eye, nose, mouth_left, mouth_right}} in pixels."""

    def __init__(self, model_file: Path, variant: Variant, min_score: float | None = None) -> None:
        import tensorflow as tf

        self.variant = variant
        self.min_score = variant.min_score if min_score is None else min_score
        self.interpreter = tf.lite.Interpreter(model_path=str(model_file), num_threads=1)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda d: d["shape"][-1])
        self.scores_index, self.boxes_index = outputs[0]["index"], outputs[-1]["index"]
        self.anchors = anchors(variant.input_size, variant.strides, variant.anchors_per_layer)
        if len(self.anchors) != outputs[0]["shape"][1]:
            raise ValueError(f"{model_file.name}: not the BlazeFace network {variant.file}")

    def detect_faces(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        return [self._detect(np.asarray(image, dtype=np.uint8)) for image in images]

    def _detect(self, image: np.ndarray) -> list[dict[str, Any]]:
        height, width = image.shape[:2]
        side = max(height, width)
        square = np.zeros((side, side, 3), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = image
        size = self.variant.input_size
        pixels = resize(square, (size, size)).astype(np.float32) / 127.5 - 1.0
        self.interpreter.set_tensor(self.input_index, pixels[np.newaxis])
        self.interpreter.invoke()
        raw_boxes = self.interpreter.get_tensor(self.boxes_index)[0]
        raw_scores = self.interpreter.get_tensor(self.scores_index)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -100.0, 100.0)))
        keep = scores >= self.min_score
        if not keep.any():
            return []
        decoded = raw_boxes[keep] / size  # (cx, cy, w, h, 6 keypoints) relative to the anchor
        centres = self.anchors[keep]
        decoded[:, 0:2] += centres
        decoded[:, 4::2] += centres[:, :1]
        decoded[:, 5::2] += centres[:, 1:]
        faces = []
        for score, row in weighted_suppression(scores[keep], decoded):
            points = (row[4:16].reshape(6, 2) * side) - (left, top)
            cx, cy, w, h = row[0] * side - left, row[1] * side - top, row[2] * side, row[3] * side
            eyes = sorted(points[:2].tolist())  # the eye nearer the image's left edge first
            faces.append(
                {
                    "box": [round(cx - w / 2), round(cy - h / 2), round(w), round(h)],
                    "confidence": float(score),
                    "keypoints": {
                        "left_eye": _pixel(eyes[0]),
                        "right_eye": _pixel(eyes[1]),
                        "nose": _pixel(points[2]),
                        # BlazeFace marks one mouth centre; both mouth corners get it.
                        "mouth_left": _pixel(points[3]),
                        "mouth_right": _pixel(points[3]),
                    },
                }
            )
        return faces


def _pixel(point: Sequence[float]) -> tuple[int, int]:
    return round(float(point[0])), round(float(point[1]))


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Overlap of one (cx, cy, w, h) box with each of `others`."""
    low = np.maximum(box[:2] - box[2:4] / 2, others[:, :2] - others[:, 2:4] / 2)
    high = np.minimum(box[:2] + box[2:4] / 2, others[:, :2] + others[:, 2:4] / 2)
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


def weighted_suppression(
    scores: np.ndarray, rows: np.ndarray, iou: float = SUPPRESSION_IOU
) -> list[tuple[float, np.ndarray]]:
    """MediaPipe's weighted NMS: the best box absorbs every box overlapping it more than
    `iou`, and the face is their score-weighted mean, with the best box's score."""
    order = np.argsort(-scores)
    scores, rows = scores[order], rows[order]
    faces = []
    remaining = np.arange(len(scores))
    while remaining.size:
        best = remaining[0]
        overlapping = _iou(rows[best], rows[remaining]) > iou
        group = remaining[overlapping]
        weights = scores[group][:, np.newaxis]
        faces.append((float(scores[best]), (rows[group] * weights).sum(0) / weights.sum()))
        remaining = remaining[~overlapping]
    return faces


def load_blazeface(manifest_path: Path) -> BlazeFace:
    """The detector a stored manifest describes (its files' sha256 already checked by
    despliegue/artifacts.py, as for every stored model)."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    variant = VARIANTS[manifest["variant"]]
    file = manifest_path.parent / manifest["weights"][manifest["variant"]]["file"]
    return BlazeFace(file, variant, manifest.get("min_score"))
