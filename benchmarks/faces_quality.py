"""Face detectors compared on faces with known boxes, made offline: recall, precision, speed.

No labelled face set can be downloaded here, so the scenes are made from pictures packages
ship: the 100 LFW faces of `skimage.data.lfw_subset()` (25x25 grey crops of the inner face)
pasted at known positions and sizes (40-160 px) into 512x512 backgrounds cut from skimage's
face-free photos, with LFW's 100 non-face crops pasted the same way as distractors; plus
skimage's `astronaut()` and `camera()` (one real face each; their boxes are written below).
A detection counts as a face found when it overlaps an unmatched true box with IoU >= 0.3
(the crops are tight, detectors' boxes are not: both detectors are judged alike).

Each stored detector is loaded as the face runner loads it (`load_artifact`), and timed on
`astronaut()` alone, one image per call (what /face does per request). Run with the store
holding both detectors:

    python save_models.py reference face_detector face_detector_blazeface
    python -m benchmarks.faces_quality --models face_detector face_detector_blazeface
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SCENES = 40
SIDE = 512
FACES_PER_SCENE = (2, 4)
DISTRACTORS_PER_SCENE = 2
FACE_SIZES = (40, 160)
MATCH_IOU = 0.3
# (x, y, width, height) of the one face in each photo, read off the pictures.
PHOTO_FACES = {"astronaut": (170, 40, 100, 130), "camera": (225, 70, 90, 110)}
BACKGROUNDS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
Box = tuple[int, int, int, int]


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels * 255.0, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


def _scaled(pixels: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR))


def _background(rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]
    scale = SIDE / min(photo.shape[:2])
    height, width = (max(SIDE, round(d * scale)) for d in photo.shape[:2])
    resized = np.asarray(Image.fromarray(photo).resize((width, height)))
    top, left = int(rng.integers(height - SIDE + 1)), int(rng.integers(width - SIDE + 1))
    return resized[top : top + SIDE, left : left + SIDE].copy()


def _free_spot(rng: np.random.Generator, size: int, taken: list[Box]) -> Box | None:
    for _ in range(50):
        x, y = (int(v) for v in rng.integers(0, SIDE - size, size=2))
        box = (x, y, size, size)
        if all(iou(box, other) == 0 and not _near(box, other) for other in taken):
            return box
    return None


def _near(a: Box, b: Box, gap: int = 8) -> bool:
    return not (
        a[0] + a[2] + gap <= b[0]
        or b[0] + b[2] + gap <= a[0]
        or a[1] + a[3] + gap <= b[1]
        or b[1] + b[3] + gap <= a[1]
    )


def scenes(seed: int = 2026) -> list[tuple[str, np.ndarray, list[Box]]]:
    """(name, RGB image, true face boxes): the pasted scenes, then the two photos."""
    from skimage import data

    crops = data.lfw_subset()
    faces, non_faces = crops[:100], crops[100:]
    photos = [_rgb(getattr(data, name)()) for name in BACKGROUNDS]
    rng = np.random.default_rng(seed)
    made = []
    for index in range(SCENES):
        image = _background(rng, photos)
        taken: list[Box] = []
        truth: list[Box] = []
        count = int(rng.integers(FACES_PER_SCENE[0], FACES_PER_SCENE[1] + 1))
        pasted = [(faces, True)] * count + [(non_faces, False)] * DISTRACTORS_PER_SCENE
        for pool, is_face in pasted:
            size = int(rng.integers(*FACE_SIZES))
            box = _free_spot(rng, size, taken)
            if box is None:
                continue
            crop = _scaled(_rgb(pool[int(rng.integers(len(pool)))]), size)
            image[box[1] : box[1] + size, box[0] : box[0] + size] = crop
            taken.append(box)
            if is_face:
                truth.append(box)
        made.append((f"scene-{index:02d}", image, truth))
    made.append(("astronaut", _rgb(data.astronaut()), [PHOTO_FACES["astronaut"]]))
    made.append(("camera", _rgb(data.camera()), [PHOTO_FACES["camera"]]))
    return made


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(found: Sequence[Box], truth: Sequence[Box]) -> int:
    """True boxes found: each detection, best first as given, takes its best unmatched box."""
    unmatched = list(truth)
    hits = 0
    for box in found:
        best = max(unmatched, key=lambda t: iou(box, t), default=None)
        if best is not None and iou(box, best) >= MATCH_IOU:
            unmatched.remove(best)
            hits += 1
    return hits


def evaluate(detector: Any, thresholds: Sequence[float]) -> dict[str, Any]:
    """Recall and precision over every scene at each confidence threshold (one detection pass);
    images/s on astronaut(), one per call."""
    detected = [
        (truth, [(tuple(f["box"]), f["confidence"]) for f in detector.detect_faces([image])[0]])
        for _, image, truth in scenes()
    ]
    quality = {}
    for threshold in thresholds:
        truths = found = hits = 0
        for truth, faces in detected:
            boxes = [box for box, confidence in faces if confidence >= threshold]
            truths, found = truths + len(truth), found + len(boxes)
            hits += match(boxes, truth)
        quality[f"{threshold:g}"] = {
            "true_faces": truths,
            "detections": found,
            "found": hits,
            "recall": hits / truths,
            "precision": hits / found if found else None,
        }
    from skimage import data

    photo = _rgb(data.astronaut())
    detector.detect_faces([photo])  # warm-up
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < 5.0 or calls < 5:
        detector.detect_faces([photo])
        calls += 1
    return {"by_threshold": quality, "images_per_s_512px": calls / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["face_detector", "face_detector_blazeface"])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import bentoml

    from despliegue.artifacts import load_artifact

    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "match_iou": MATCH_IOU,
        "scenes": SCENES + len(PHOTO_FACES),
        "detectors": {},
    }
    for name in args.models:
        stored = bentoml.models.get(f"{name}:latest")
        measured = evaluate(load_artifact(stored), args.thresholds)
        measured["tag"] = str(stored.tag)
        result["detectors"][name] = measured
        for threshold, q in measured["by_threshold"].items():
            print(
                f"{name} at {threshold}: recall {q['recall']:.3f}, precision {q['precision']}",
                flush=True,
            )
        print(f"{name}: {measured['images_per_s_512px']:.1f} images/s", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    (args.out_dir / f"faces-quality-{day}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
