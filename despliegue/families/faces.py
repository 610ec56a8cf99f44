"""img_super (seed 001): a face detector and a face-validation CNN, two models in the store.

`face_detector` is the real, pretrained MTCNN (P/R/O-nets) of the `mtcnn` PyPI package: its
weight files are copied from the installed package into the store with a manifest (package
version, sha256 per file), and the runner builds the detector from the stored copy.

`face_detector_blazeface` is the fast detector one can serve instead (configuration:
`families.face_detector.model: face_detector_blazeface`): MediaPipe's pretrained BlazeFace
networks, taken from the `mediapipe==0.10.14` wheel, which pip downloads (mediapipe is never
installed), stored as a manifest plus the two .tflite files, checked against the sha256
recorded here. See despliegue/blazeface.py.

`face_validator` is a small Keras CNN that scores a face crop (the seed's "validation CNN").
The reference one is trained on crops this project makes offline from images scikit-image
ships: the faces MTCNN finds in `astronaut()` and `camera()`, augmented (shift, zoom, flip,
brightness), as positives; random crops of `coffee()`, `chelsea()`, `rocket()`, `coins()`,
`hubble_deep_field()` and of the astronaut image away from her face as negatives. Two faces
are far too few to validate real faces: it shows the path works; import your own CNN.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata as package_metadata
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from despliegue.artifacts import sha256_of
from despliegue.families.base import Recipe, ReferenceModel
from despliegue.families.image_models import decide_preprocessing, flat_output_warnings
from despliegue.preprocessing import PRESETS

MTCNN_STAGES = ("pnet", "rnet", "onet")
CROP_SIZE = (64, 64)
PREPROCESSING = {
    "size": list(CROP_SIZE),
    "scale": 1 / 255,
    "offset": 0.0,
    "channels": "RGB",
    "decided_by": "reference",
}
SEED = 2026
MIN_DETECTION_CONFIDENCE = 0.9


@dataclass(frozen=True)
class PackagedMTCNN:
    """The mtcnn package's weight files, written into the store as manifest + copies."""

    version: str
    weight_files: dict[str, Path]

    def save(self, manifest_path: Path) -> None:
        entries = {}
        for stage, source in self.weight_files.items():
            target = manifest_path.parent / source.name
            shutil.copyfile(source, target)
            entries[stage] = {"file": source.name, "sha256": sha256_of(target)}
        manifest = {"package": "mtcnn", "version": self.version, "weights": entries}
        manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def build_detector_reference(model_name: str) -> ReferenceModel:
    """MTCNN for `face_detector`, BlazeFace for `face_detector_blazeface`."""
    if model_name == BLAZEFACE_NAME:
        return build_blazeface_reference()
    return build_mtcnn_reference()


def build_mtcnn_reference() -> ReferenceModel:
    weights_dir = resources.files("mtcnn.assets.weights")
    files = {stage: Path(str(weights_dir / f"{stage}.lz4")) for stage in MTCNN_STAGES}
    version = package_metadata.version("mtcnn")
    metadata = {
        "reference": True,
        "pretrained": True,
        "task": "face detection: boxes (x, y, width, height), confidence, 5 landmarks",
        "source": f"weights shipped in the mtcnn {version} package (PyPI), copied unchanged",
        "training_data": "WIDER FACE and CelebA, by the MTCNN authors (Zhang et al. 2016)",
        "measured": (
            "finds the faces in skimage.data.astronaut() and camera() at >= 0.99, "
            "none in coffee() or chelsea()"
        ),
    }
    return ReferenceModel(model=PackagedMTCNN(version, files), metadata=metadata)


# The wheel BlazeFace comes from, and its two networks (sha256 of the files as the wheel
# holds them: a changed wheel is refused, not stored).
BLAZEFACE_NAME = "face_detector_blazeface"
MEDIAPIPE_WHEEL = "mediapipe==0.10.14"
BLAZEFACE_FILES = {
    "short_range": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    "full_range": (
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    ),
}
# Full range: faces near and far (a face is often a small part of a photo sent to /face).
BLAZEFACE_VARIANT = "full_range"


@dataclass(frozen=True)
class PackagedBlazeFace:
    """BlazeFace's .tflite files out of the mediapipe wheel, written as manifest + copies."""

    networks: dict[str, bytes]  # variant -> the .tflite file's bytes, sha256 checked

    @classmethod
    def from_wheel(cls, wheel: Path) -> PackagedBlazeFace:
        """Reads both networks out of the wheel, refusing a file whose sha256 changed."""
        networks = {}
        with zipfile.ZipFile(wheel) as archive:
            for variant, (member, sha256) in BLAZEFACE_FILES.items():
                networks[variant] = archive.read(member)
                if hashlib.sha256(networks[variant]).hexdigest() != sha256:
                    raise ValueError(f"{member} in {wheel.name}: unexpected sha256")
        return cls(networks)

    def save(self, manifest_path: Path) -> None:
        entries = {}
        for variant, (member, sha256) in BLAZEFACE_FILES.items():
            target = manifest_path.parent / Path(member).name
            target.write_bytes(self.networks[variant])
            entries[variant] = {"file": target.name, "sha256": sha256}
        manifest = {"package": MEDIAPIPE_WHEEL, "variant": BLAZEFACE_VARIANT, "weights": entries}
        manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def download_mediapipe_wheel(folder: Path) -> Path:
    """The mediapipe wheel, downloaded by pip (never installed: its protobuf pin conflicts
    with TensorFlow's). The platform is fixed, so every machine gets the same file."""
    download = [sys.executable, "-m", "pip", "download", MEDIAPIPE_WHEEL, "--no-deps"]
    platform = ["--python-version", "3.11", "--implementation", "cp"]
    platform += ["--platform", "manylinux_2_17_x86_64", "--only-binary=:all:"]
    subprocess.run([*download, *platform, "--quiet", "--dest", str(folder)], check=True)
    return next(folder.glob("mediapipe-*.whl"))


def build_blazeface_reference() -> ReferenceModel:
    with tempfile.TemporaryDirectory(prefix="mediapipe-wheel-") as folder:
        model = PackagedBlazeFace.from_wheel(download_mediapipe_wheel(Path(folder)))
    metadata = {
        "reference": True,
        "pretrained": True,
        "task": "face detection: boxes (x, y, width, height), confidence, 5 landmarks",
        "source": f"BlazeFace .tflite files of the {MEDIAPIPE_WHEEL} wheel (PyPI), unchanged",
        "training_data": "Google's BlazeFace training set (Bazarevsky et al. 2019)",
        "variant": BLAZEFACE_VARIANT,
    }
    return ReferenceModel(
        model=model,
        metadata=metadata,
        framework="blazeface",
    )


def probe_detector(model: Any) -> None:
    found = model.detect_faces([np.zeros((64, 64, 3), dtype=np.uint8)])
    if not isinstance(found, list):
        raise ValueError("detect_faces did not answer a list per image")


def _face_boxes(detector: Any, image: np.ndarray) -> list[tuple[int, int, int, int]]:
    faces = detector.detect_faces([image])[0]
    return [tuple(face["box"]) for face in faces if face["confidence"] >= MIN_DETECTION_CONFIDENCE]


def _crop(image: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray | None:
    from despliegue.images import resize

    x0, y0 = int(max(0, x)), int(max(0, y))
    x1, y1 = int(min(image.shape[1], x + w)), int(min(image.shape[0], y + h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    return resize(np.ascontiguousarray(image[y0:y1, x0:x1]), CROP_SIZE)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _positives(rng: np.random.Generator, image: np.ndarray, box: tuple, count: int) -> list:
    x, y, w, h = box
    crops = []
    while len(crops) < count:
        zoom = rng.uniform(0.85, 1.25)
        cw, ch = w * zoom, h * zoom
        cx = x + w / 2 + rng.uniform(-0.1, 0.1) * w
        cy = y + h / 2 + rng.uniform(-0.1, 0.1) * h
        crop = _crop(image, cx - cw / 2, cy - ch / 2, cw, ch)
        if crop is None:
            continue
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(np.clip(crop * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8))
    return crops


def _overlaps(a: tuple, b: tuple) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _negatives(rng: np.random.Generator, image: np.ndarray, avoid: list, count: int) -> list:
    height, width = image.shape[:2]
    crops = []
    while len(crops) < count:
        side = rng.uniform(0.1, 0.5) * min(height, width)
        x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
        if any(_overlaps((x, y, side, side), box) for box in avoid):
            continue
        crop = _crop(image, x, y, side, side)
        if crop is not None:
            crops.append(crop)
    return crops


def build_validator_reference() -> ReferenceModel:
    from skimage import data

    from despliegue.tensorflow_runtime import configure_tensorflow

    tf = configure_tensorflow()
    import keras
    from mtcnn import MTCNN

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    detector = MTCNN()
    positives, negatives = [], []
    for name in ("astronaut", "camera"):
        image = _as_rgb(getattr(data, name)())
        boxes = _face_boxes(detector, image)
        for box in boxes:
            positives += _positives(rng, image, box, 240 // len(boxes))
        negatives += _negatives(rng, image, boxes, 60)
    for name in ("coffee", "chelsea", "rocket", "coins", "hubble_deep_field"):
        negatives += _negatives(rng, _as_rgb(getattr(data, name)()), [], 70)
    x = np.stack(positives + negatives).astype(np.float32) * PREPROCESSING["scale"]
    y = np.array([1] * len(positives) + [0] * len(negatives), dtype=np.float32)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    split = int(len(x) * 0.75)
    model = keras.Sequential(
        [
            keras.Input(shape=(*CROP_SIZE, 3)),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="face_validator_reference",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x[:split], y[:split], epochs=15, batch_size=32, verbose=0)
    scores = model(tf.constant(x[split:]), training=False).numpy()[:, 0]
    accuracy = float(np.mean((scores >= 0.5) == (y[split:] == 1)))
    metadata = {
        "reference": True,
        "task": "face validation: score in [0, 1] that a crop is a usable face",
        "preprocessing": PREPROCESSING,
        "training_data": (
            f"{len(positives)} augmented crops of the faces MTCNN finds in skimage.data "
            f"astronaut() and camera() (positives), {len(negatives)} random crops of coffee(), "
            "chelsea(), rocket(), coins(), hubble_deep_field() and of those two images away "
            "from the faces (negatives); made offline, two real faces only"
        ),
        "feature_ranges": {"pixels": [0, 255], "input_shape": [*CROP_SIZE, 3]},
        "metrics_held_out": {"split": "25% of the crops held out", "accuracy": round(accuracy, 4)},
        "parameters": int(model.count_params()),
    }
    return ReferenceModel(model=model, metadata=metadata)


def validator_serving_metadata(
    model_name: str, model: Any, declared: dict[str, Any]
) -> dict[str, Any]:
    """Its own input size; the preprocessing detected in it or declared (else pixels / 255)."""
    preprocessing = decide_preprocessing(model, declared.get("preprocessing"), PRESETS["unit"])
    return {"preprocessing": preprocessing.to_metadata()}


def probe_validator(model: Any) -> None:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(f"expected an input of shape (batch, height, width, 3), got {shape}")
    output = np.asarray(model(np.zeros((2, *shape[1:]), dtype=np.float32), training=False))
    if output.reshape(2, -1).shape != (2, 1):
        raise ValueError(f"2 crops gave output shape {output.shape}; expected one score each")
    if not np.all((output >= 0) & (output <= 1)):
        raise ValueError("scores must lie in [0, 1] (end the model with a sigmoid)")


DETECTOR = Recipe(
    family="face_detector",
    model_name="face_detector",
    framework="mtcnn",
    description="face detector: MTCNN (mtcnn package) or BlazeFace (mediapipe wheel's .tflite)",
    build_reference=build_detector_reference,
    probe=probe_detector,
    # Two detectors configuration can pick (`families.face_detector.model`).
    name_pattern=r"face_detector(_blazeface)?",
    reference_names=("face_detector",),
    # BlazeFace is downloaded (a 35 MB wheel) only when configured or asked for by name.
    optional_names=(BLAZEFACE_NAME,),
)
VALIDATOR = Recipe(
    family="face_validator",
    model_name="face_validator",
    framework="keras",
    description="Keras CNN: 64x64 face crop -> validation score",
    build_reference=build_validator_reference,
    probe=probe_validator,
    serving_metadata=validator_serving_metadata,
    review=flat_output_warnings,
)
