"""The served models as the peer servers call them: the same stored files, the same work.

Runs inside a peer's own venv (.venv-ray, .venv-mlserver), which has the model libraries at
the service's pins but neither BentoML nor this project's service code; so everything a peer
needs comes from the manifest `benchmarks.store --peer-manifest` writes from the model store
(artifact files, the preprocessing in each model's metadata, thresholds, TensorFlow thread
pools). Each `PeerModel` takes a batch of one path's items and returns one answer per item,
doing what the service's runner does per batch (and, for /super, the API's crops):

    heatflow     thickness (m)            -> heat flow, rounded as the service rounds it
    falsetrue    text                     -> [label, probability of Real] (predict + proba)
    flowers      Base64 image             -> class probabilities
    face         Base64 image             -> rows (x, y, w, h, confidence, 5 landmarks) >= threshold
    super        Base64 image             -> best validation score of its faces (0.0: none)
    antibiotics  16 markers (AMK)         -> class probabilities (standardized as stored)

Images are decoded here, in the peer, as the service's API decodes them (Base64; JPEG by
libjpeg-turbo through simplejpeg, anything else by Pillow; RGB).
"""

from __future__ import annotations

import base64
import io
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The JSON field of the service's request body that holds a path's items (the Ray peer takes
# the service's own bodies; MLServer takes V2 tensors).
REQUEST_FIELD = {
    "heatflow": "sediment_thickness_m",
    "falsetrue": "texts",
    "flowers": "images",
    "face": "input_data",
    "super": "input_data",
    "antibiotics": "features",
}

PeerModel = Callable[[Sequence[Any]], list[Any]]
# The order of a detection row's landmarks (despliegue/contracts.py, which needs pydantic).
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def decode_image(encoded: str | bytes) -> np.ndarray:
    """RGB pixels, as the service decodes them: an upright RGB or grey JPEG by libjpeg-turbo
    (simplejpeg), anything else by Pillow (despliegue/images.py; the same pixels either way)."""
    import simplejpeg
    from PIL import Image, ImageOps

    raw = base64.b64decode(encoded)
    image = Image.open(io.BytesIO(raw))
    upright = image.getexif().get(0x0112, 1) == 1
    if image.format == "JPEG" and image.mode in ("RGB", "L") and upright:
        try:
            return simplejpeg.decode_jpeg(raw, "RGB")
        except ValueError:
            pass  # what libjpeg-turbo warns about, Pillow decodes (or refuses)
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def _tensorflow(manifest: dict[str, Any]) -> Any:
    import tensorflow as tf

    threads = manifest["tensorflow"]
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads["intra_op_threads"])
        tf.config.threading.set_inter_op_parallelism_threads(threads["inter_op_threads"])
    except RuntimeError:
        pass  # already initialised in this process
    return tf


class ImageCNN:
    """A stored Keras image model with its stored preprocessing, one traced graph for every
    batch size (as the service's runners call it)."""

    def __init__(self, entry: dict[str, Any], manifest: dict[str, Any]) -> None:
        import keras

        tf = _tensorflow(manifest)
        model = keras.models.load_model(entry["file"], compile=False)
        preprocessing = entry["metadata"]["preprocessing"]
        self.size = (int(preprocessing["size"][0]), int(preprocessing["size"][1]))
        self.scale = np.float32(preprocessing["scale"])
        self.offset = np.float32(preprocessing["offset"])
        self.forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec([None, *self.size, 3], tf.float32)],
        )

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack([_resize(np.asarray(image, np.uint8), self.size) for image in images])
        return np.asarray(self.forward(batch.astype(np.float32) * self.scale + self.offset))


class FaceDetector:
    """MTCNN from the stored weight files (the mtcnn package's networks), rows per image with
    the confidence at or above the configured threshold."""

    def __init__(self, entry: dict[str, Any], manifest: dict[str, Any]) -> None:
        from mtcnn import MTCNN
        from mtcnn.stages import StageONet, StagePNet, StageRNet

        _tensorflow(manifest)
        stored = json.loads(Path(entry["file"]).read_text(encoding="utf-8"))["weights"]
        folder = Path(entry["file"]).parent
        self.threshold = float(entry["threshold"])
        self.mtcnn = MTCNN(
            stages=[
                StagePNet(weights=str(folder / stored["pnet"]["file"])),
                StageRNet(weights=str(folder / stored["rnet"]["file"])),
                StageONet(weights=str(folder / stored["onet"]["file"])),
            ]
        )

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[list[float]]]:
        # Same-sized images in one call, as the service's runner does (mtcnn pads mixed sizes).
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[np.shape(image)].append(index)
        answers: list[list[list[float]]] = [[] for _ in images]
        for indices in by_shape.values():
            found = self.mtcnn.detect_faces([images[i] for i in indices])
            for index, faces in zip(indices, found, strict=True):
                answers[index] = [
                    [*map(float, face["box"]), float(face["confidence"])]
                    + [float(c) for name in LANDMARKS for c in face["keypoints"][name]]
                    for face in faces
                    if face["confidence"] >= self.threshold
                ]
        return answers


def _crop(image: np.ndarray, row: Sequence[float]) -> np.ndarray:
    """The service's crop: the rounded box clipped to the image, at least 1x1."""
    height, width = image.shape[:2]
    x, y = max(0, round(row[0])), max(0, round(row[1]))
    w, h = max(1, round(row[2])), max(1, round(row[3]))
    x0, y0 = min(x, width - 1), min(y, height - 1)
    x1, y1 = max(x0 + 1, min(width, x + w)), max(y0 + 1, min(height, y + h))
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _heatflow(entry: dict[str, Any], manifest: dict[str, Any]) -> PeerModel:
    import joblib

    model = joblib.load(entry["file"])

    def predict(values: Sequence[float]) -> list[float]:
        column = np.asarray(values, dtype=float).reshape(-1, 1)
        return np.round(np.asarray(model.predict(column), dtype=float), 3).tolist()

    return predict


def _falsetrue(entry: dict[str, Any], manifest: dict[str, Any]) -> PeerModel:
    import joblib

    model = joblib.load(entry["file"])
    real = list(model.classes_).index(1)

    def classify(texts: Sequence[str]) -> list[list[float]]:
        labels = np.asarray(model.predict(list(texts)), dtype=float)
        p_real = np.asarray(model.predict_proba(list(texts)), dtype=float)[:, real]
        return np.stack([labels, p_real], axis=1).tolist()

    return classify


def _flowers(entry: dict[str, Any], manifest: dict[str, Any]) -> PeerModel:
    cnn = ImageCNN(entry, manifest)

    def classify(encoded: Sequence[str]) -> list[list[float]]:
        return cnn([decode_image(text) for text in encoded]).tolist()

    return classify


def _face(entry: dict[str, Any], manifest: dict[str, Any]) -> PeerModel:
    detector = FaceDetector(entry, manifest)

    def detect(encoded: Sequence[str]) -> list[list[list[float]]]:
        return detector([decode_image(text) for text in encoded])

    return detect


def _super(entry: dict[str, Any], manifest: dict[str, Any]) -> PeerModel:
    detector = FaceDetector(manifest["models"]["face"], manifest)
    validator = ImageCNN(entry, manifest)

    def best_score(encoded: Sequence[str]) -> list[float]:
        images = [decode_image(text) for text in encoded]
        detections = detector(images)
        crops = [
            _crop(image, row)
            for image, rows in zip(images, detections, strict=True)
            for row in rows
        ]
        scores = validator(crops).reshape(-1).tolist() if crops else []
        best, start = [], 0
        for rows in detections:
            best.append(max(scores[start : start + len(rows)], default=0.0))
            start += len(rows)
        return best

    return best_score


def _antibiotics(entry: dict[str, Any], manifest: dict[str, Any]) -> PeerModel:
    import keras

    _tensorflow(manifest)
    model = keras.models.load_model(entry["file"], compile=False)
    preprocessing = entry["metadata"].get("preprocessing") or {"kind": "none"}
    standardize = preprocessing.get("kind") == "standardize"
    mean = np.asarray(preprocessing["mean"], np.float32) if standardize else 0.0
    std = np.asarray(preprocessing["std"], np.float32) if standardize else 1.0

    def probabilities(rows: Sequence[Sequence[float]]) -> list[list[float]]:
        features = (np.asarray(rows, dtype=np.float32) - mean) / std
        return np.asarray(model(features, training=False), dtype=float).tolist()

    return probabilities


LOADERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], PeerModel]] = {
    "heatflow": _heatflow,
    "falsetrue": _falsetrue,
    "flowers": _flowers,
    "face": _face,
    "super": _super,
    "antibiotics": _antibiotics,
}


def load(path: str, manifest: dict[str, Any]) -> PeerModel:
    """The batch function of one benchmark path, from the manifest's stored files."""
    return LOADERS[path](manifest["models"][path], manifest)
