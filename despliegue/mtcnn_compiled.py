"""MTCNN in ONNX Runtime: mtcnn 1.0.0's three networks exported, its pipeline in numpy.

Why: mtcnn 1.0.0 calls its Keras networks eagerly, layer by layer (~130 layer calls for one
512 px photo), and builds its pyramid with TensorFlow ops on float64 arrays converted per
scale; on one core most of its time is that dispatch, not arithmetic (benchmarks/
mtcnn_runtimes.py measures it). Here P-Net, R-Net and O-Net are ONNX exports of the stored
weights, and the pyramid (area resize), the patch crops (bilinear, as
`tf.image.crop_and_resize`), the box decoding and the NMS rounds are numpy over all images of
a batch, following mtcnn 1.0.0 step by step with its default parameters, so `detect_faces`
answers what mtcnn's does (same dicts, same order).

The weight files stay the source of truth. When the detector enters the store each network is
exported (tf2onnx) beside them and checked against the TensorFlow network on probe inputs;
only exports within 1e-4 on every output are kept, with their sha256, converter and runtime
versions on the model card (`compiled`); otherwise mtcnn on TensorFlow serves and the card
says why. Serving the exports imports neither TensorFlow nor mtcnn.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("pnet", "rnet", "onet")
RUNTIME = "onnxruntime"
TOLERANCE = 1e-4
INPUT_SHAPES: dict[str, list[int | None]] = {
    "pnet": [None, None, None, 3],
    "rnet": [None, 24, 24, 3],
    "onet": [None, 48, 48, 3],
}
# mtcnn 1.0.0's defaults (MTCNN.detect_faces keyword arguments), which the runner uses.
MIN_FACE_SIZE = 20
MIN_SIZE = 12
SCALE_FACTOR = 0.709
THRESHOLD_PNET, THRESHOLD_RNET, THRESHOLD_ONET = 0.6, 0.7, 0.8
NMS_PNET_SCALE, NMS_PNET, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
# Landmark columns (x at 6 + i, y at 11 + i) in mtcnn's key order.
KEYPOINTS = {"nose": 2, "mouth_right": 4, "right_eye": 1, "left_eye": 0, "mouth_left": 3}

# A network: a float32 batch in, its outputs (Keras' order) out.
Network = Callable[[np.ndarray], list[np.ndarray]]


class CompiledMTCNN:
    """mtcnn.MTCNN's `detect_faces` on three compiled networks."""

    def __init__(self, pnet: Network, rnet: Network, onet: Network) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet

    def detect_faces(self, images: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        """Per image, mtcnn's face dicts (box x, y, w, h; confidence; keypoints), best first.

        Images of one shape are one batch (mtcnn pads mixed sizes and then shifts some boxes
        by another image's padding; grouping answers each image as if alone)."""
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[np.shape(image)].append(index)
        answers: list[list[dict[str, Any]]] = [[] for _ in images]
        for indices in by_shape.values():
            batch = np.stack([np.asarray(images[i]) for i in indices])
            rows = self.detect(batch)
            for position, index in enumerate(indices):
                answers[index] = as_dicts(rows[rows[:, 0] == position])
        return answers

    def detect(self, images: np.ndarray) -> np.ndarray:
        """Rows [image, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y] for a batch of
        same-sized RGB images (N, H, W, 3), grouped by image, best first."""
        # Exact in float32 (half-integers over a power of two), as mtcnn's float64.
        normalized = (np.asarray(images, dtype=np.float32) - 127.5) / 128
        height, width = normalized.shape[1:3]
        boxes = self._proposals(normalized)
        if len(boxes):
            boxes = self._refined(normalized, boxes)
        if len(boxes):
            boxes = self._outputs(normalized, boxes)
        if not len(boxes):
            return np.empty((0, 16))
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, width - 1)
        boxes[:, [2, 4]] = np.clip(boxes[:, [2, 4]], 0, height - 1)
        return boxes

    def _proposals(self, normalized: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes [image, x1, y1, x2, y2, score], squared."""
        height, width = normalized.shape[1:3]
        rows = AreaResizer(normalized)
        found = []
        for scale in pyramid_scales(height, width):
            size = (np.array([height, width]) * scale).astype(np.int64)
            regression, probability = self.pnet(rows.resized(int(size[0]), int(size[1])))[:2]
            boxes = decoded_windows(regression, probability, THRESHOLD_PNET)
            boxes[:, 1:5] /= scale
            found.append(nms(boxes, NMS_PNET_SCALE, "union"))
        boxes = np.concatenate(found) if found else np.empty((0, 6))
        return squared(nms(by_score(boxes), NMS_PNET, "union"))

    def _refined(self, normalized: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on every candidate of the batch in one call."""
        regression, probability = self.rnet(patches(normalized, boxes, 24))[:2]
        boxes = adjusted(boxes, regression, probability)
        boxes = boxes[boxes[:, 5] > THRESHOLD_RNET]
        return squared(nms(by_score(boxes), NMS_RNET, "union"))

    def _outputs(self, normalized: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """O-Net: final boxes, scores and landmarks (in the box O-Net saw, as mtcnn maps them)."""
        regression, landmarks, probability = self.onet(patches(normalized, boxes, 48))[:3]
        landmarks = np.asarray(landmarks, dtype=np.float64)
        widths = boxes[:, 3:4] - boxes[:, 1:2] + 1
        heights = boxes[:, 4:5] - boxes[:, 2:3] + 1
        xs = widths * landmarks[:, 0:5] + boxes[:, 1:2] - 1
        ys = heights * landmarks[:, 5:10] + boxes[:, 2:3] - 1
        boxes = np.concatenate([adjusted(boxes, regression, probability), xs, ys], axis=1)
        boxes = boxes[boxes[:, 5] > THRESHOLD_ONET]
        return nms(by_score(boxes), NMS_ONET, "min")


def pyramid_scales(height: int, width: int) -> np.ndarray:
    """mtcnn's pyramid (build_scale_pyramid): 12/20 then x0.709 while the side stays >= 12."""
    count = round(-((np.log(min(width, height) / MIN_SIZE) / np.log(SCALE_FACTOR)) + 1))
    return (MIN_SIZE / MIN_FACE_SIZE) * SCALE_FACTOR ** np.arange(count)


class AreaResizer:
    """`tf.image.resize(..., method="area")` of one batch to many sizes, in float32 as
    TensorFlow computes it.

    Area resizing is separable: along an axis, each output cell is the mean of the input cells
    it covers, the cells at its edges weighted by the fraction covered, so each axis is a
    sparse matrix (an output cell covers at most ceil(in/out) + 1 cells) applied to the image.
    Measured on a 512 px pyramid, one core: 1.6x faster than one numpy gather per covered cell,
    2.5x faster than a gather summed over its cells, and a dense matrix was slower still."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = np.asarray(images, dtype=np.float32)

    def resized(self, height: int, width: int) -> np.ndarray:
        count, rows_in, columns_in, channels = self.images.shape
        down, across = area_matrix(rows_in, height), area_matrix(columns_in, width)
        resized = np.empty((count, height, width, channels), dtype=np.float32)
        for index, image in enumerate(self.images):
            rows = (down @ image.reshape(rows_in, columns_in * channels)).reshape(
                height, columns_in, channels
            )
            by_column = rows.transpose(1, 0, 2).reshape(columns_in, height * channels)
            resized[index] = (
                (across @ by_column).reshape(width, height, channels).transpose(1, 0, 2)
            )
        return resized


@functools.lru_cache(maxsize=256)
def area_matrix(length: int, size: int) -> Any:
    """The (size x length) sparse matrix of an area resize along one axis."""
    from scipy import sparse

    scale = length / size
    starts = np.arange(size) * scale
    ends = np.minimum(starts + scale, length)
    cells = np.floor(starts).astype(np.intp)[:, None] + np.arange(math.ceil(scale) + 1)
    covered = np.minimum(cells + 1, ends[:, None]) - np.maximum(cells, starts[:, None])
    weights = (np.clip(covered, 0, None) / scale).astype(np.float32)
    rows = np.repeat(np.arange(size), cells.shape[1])
    columns = np.minimum(cells, length - 1).ravel()
    return sparse.csr_matrix((weights.ravel(), (rows, columns)), shape=(size, length))


def decoded_windows(
    regression: np.ndarray, probability: np.ndarray, threshold: float
) -> np.ndarray:
    """P-Net's 12 px windows (stride 2) scoring above `threshold`, moved by its regression:
    [image, x1, y1, x2, y2, score], best first (mtcnn's generate_bounding_box)."""
    score = probability[..., 1]
    image, y, x = np.nonzero(score > threshold)
    shift = np.asarray(regression[image, y, x], dtype=np.float64) * 11
    boxes = np.stack(
        [
            image,
            2 * x + 1 + shift[:, 0],
            2 * y + 1 + shift[:, 1],
            2 * x + 12 + shift[:, 2],
            2 * y + 12 + shift[:, 3],
            score[image, y, x],
        ],
        axis=1,
    ).astype(np.float64)
    return by_score(boxes)


def by_score(boxes: np.ndarray) -> np.ndarray:
    """Best first, as mtcnn sorts (reversed argsort: ties keep mtcnn's order)."""
    return boxes[np.argsort(boxes[:, 5])[::-1]]


def overlaps(corners: np.ndarray, method: str) -> np.ndarray:
    """Pairwise intersection over union ("union") or over the smaller area ("min"), with
    mtcnn's areas (x2 - x1) * (y2 - y1)."""
    area = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    low = np.maximum(corners[:, None, :2], corners[None, :, :2])
    high = np.minimum(corners[:, None, 2:], corners[None, :, 2:])
    inter = np.prod(np.maximum(0, high - low), axis=2)
    if method == "union":
        denominator = area[:, None] + area[None, :] - inter
    else:
        denominator = np.minimum(area[:, None], area[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / denominator


def nms(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """mtcnn 1.0.0's NMS, per image, in the order given: a box goes when any earlier box of its
    image overlaps it by more than `threshold`, even one that went itself (not greedy NMS:
    this is what mtcnn answers). Rows come back grouped by image, as mtcnn's do."""
    keep = np.zeros(len(boxes), dtype=bool)
    for image in np.unique(boxes[:, 0]):
        index = np.flatnonzero(boxes[:, 0] == image)
        over = np.triu(overlaps(boxes[index, 1:5], method) > threshold, k=1)
        keep[index] = ~over.any(axis=0)
    kept = boxes[keep]
    return kept[np.argsort(kept[:, 0], kind="stable")]


def squared(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square on its longer side, same centre (mtcnn's resize_to_square)."""
    boxes = boxes.copy()
    width, height = boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]
    side = np.maximum(width, height)
    boxes[:, 1] += width * 0.5 - side * 0.5
    boxes[:, 2] += height * 0.5 - side * 0.5
    boxes[:, 3] = boxes[:, 1] + side
    boxes[:, 4] = boxes[:, 2] + side
    return boxes


def adjusted(boxes: np.ndarray, regression: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """The network's score replaces the box's; its regression moves the corners by fractions
    of the box's size (+1 px, as mtcnn's adjust_bboxes)."""
    boxes = boxes[:, :6].copy()
    boxes[:, 5] = probability[:, -1]
    width = boxes[:, 3] - boxes[:, 1] + 1
    height = boxes[:, 4] - boxes[:, 2] + 1
    boxes[:, 1:5] += np.asarray(regression, dtype=np.float64) * np.stack(
        [width, height, width, height], axis=1
    )
    return boxes


def patches(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """`tf.image.crop_and_resize` (bilinear, zero outside the image) of each box, to size x
    size, with mtcnn's box normalisation (corners divided by the height and width)."""
    _, height, width, _ = images.shape
    steps = np.arange(size)

    def grid(low: np.ndarray, high: np.ndarray, extent: int) -> np.ndarray:
        low, high = low / extent, high / extent
        step = (high - low) * (extent - 1) / (size - 1)
        return low[:, None] * (extent - 1) + steps[None, :] * step[:, None]

    ys = grid(boxes[:, 2], boxes[:, 4], height)
    xs = grid(boxes[:, 1], boxes[:, 3], width)
    inside = ((ys >= 0) & (ys <= height - 1))[:, :, None] & ((xs >= 0) & (xs <= width - 1))[
        :, None, :
    ]
    top, left = np.floor(ys), np.floor(xs)
    # float32 weights: float64 ones made every sample float64 (2x slower crops).
    y_lerp = (ys - top).astype(np.float32)[:, :, None, None]
    x_lerp = (xs - left).astype(np.float32)[:, None, :, None]
    top_i = np.clip(top, 0, height - 1).astype(np.intp)[:, :, None]
    bottom_i = np.clip(np.ceil(ys), 0, height - 1).astype(np.intp)[:, :, None]
    left_i = np.clip(left, 0, width - 1).astype(np.intp)[:, None, :]
    right_i = np.clip(np.ceil(xs), 0, width - 1).astype(np.intp)[:, None, :]
    flat = images.reshape(-1, images.shape[-1])
    first_row = (boxes[:, 0].astype(np.intp) * height)[:, None, None]

    def pixels(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return np.take(flat, (first_row + rows) * width + columns, axis=0)

    upper = pixels(top_i, left_i)
    upper = upper + (pixels(top_i, right_i) - upper) * x_lerp
    lower = pixels(bottom_i, left_i)
    lower = lower + (pixels(bottom_i, right_i) - lower) * x_lerp
    sampled = upper + (lower - upper) * y_lerp
    return np.where(inside[..., None], sampled, np.float32(0))


def as_dicts(rows: np.ndarray) -> list[dict[str, Any]]:
    """mtcnn's JSON answer for one image's rows (box and keypoints rounded to pixels)."""
    boxes = np.stack(
        [rows[:, 1], rows[:, 2], rows[:, 3] - rows[:, 1], rows[:, 4] - rows[:, 2]], axis=1
    )
    boxes = boxes.round().astype(int).tolist()
    points = rows[:, 6:16].round().astype(int).tolist()
    return [
        {
            "box": box,
            "confidence": float(row[5]),
            "keypoints": {name: [xy[i], xy[5 + i]] for name, i in KEYPOINTS.items()},
        }
        for box, row, xy in zip(boxes, rows, points, strict=True)
    ]


# Storing and checking (build side: imports TensorFlow, mtcnn and tf2onnx) ---------------------


def tensorflow_networks(weights: dict[str, Path]) -> dict[str, Any]:
    """mtcnn's Keras networks with the stored weights (what mtcnn on TensorFlow runs)."""
    from mtcnn.stages import StageONet, StagePNet, StageRNet

    stages = {"pnet": StagePNet, "rnet": StageRNet, "onet": StageONet}
    return {name: stage(weights=str(weights[name])).model for name, stage in stages.items()}


def export_network(model: Any, shape: list[int | None], target: Path) -> None:
    """One network as ONNX (tf2onnx on one traced call, as compiled_runtime exports Keras
    models), its outputs in Keras' order."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from despliegue.compiled_runtime import OPSET

    spec = [tf.TensorSpec(shape, tf.float32, name="inputs")]
    forward = tf.function(lambda batch: model(batch), input_signature=spec)
    graph, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    onnx.save(graph, str(target))


def probe_inputs(stage: str) -> list[np.ndarray]:
    """Inputs each export must answer like TensorFlow: random values in and beyond the
    normalised pixel range, and a real photo as the pipeline feeds it (pyramid levels for
    P-Net, crops for R-Net and O-Net)."""
    from skimage import data

    rng = np.random.default_rng(30)
    photo = (np.asarray(data.astronaut()[None, ..., :3], dtype=np.float32) - 127.5) / 128
    if stage == "pnet":
        resizer = AreaResizer(photo)
        return [
            rng.uniform(-1, 1, size=(2, 37, 53, 3)).astype(np.float32),
            rng.standard_normal(size=(1, 64, 48, 3)).astype(np.float32),
            resizer.resized(307, 307),
            resizer.resized(77, 77),
            resizer.resized(13, 13),
        ]
    side = INPUT_SHAPES[stage][1]
    assert side is not None
    corners = rng.uniform(0, 400, size=(16, 2))
    sizes = rng.uniform(20, 200, size=(16, 1))
    boxes = np.concatenate([np.zeros((16, 1)), corners, corners + sizes, np.ones((16, 1))], 1)
    return [
        rng.uniform(-1, 1, size=(8, side, side, 3)).astype(np.float32),
        rng.standard_normal(size=(8, side, side, 3)).astype(np.float32),
        patches(photo, boxes, side),
    ]


def largest_difference(model: Any, network: Network, inputs: list[np.ndarray]) -> float:
    """Largest absolute difference over every output of every probe (infinite when shapes or
    the number of outputs differ, or an output is not finite where TensorFlow's is)."""
    largest = 0.0
    for batch in inputs:
        expected = [np.asarray(output, dtype=np.float64) for output in model(batch)]
        answered = [np.asarray(output, dtype=np.float64) for output in network(batch)]
        if len(expected) != len(answered):
            return math.inf
        for want, got in zip(expected, answered, strict=True):
            if want.shape != got.shape:
                return math.inf
            difference = np.abs(got - want)
            largest = max(
                largest, float(np.nanmax(np.where(np.isnan(difference), np.inf, difference)))
            )
    return largest


def compile_beside(manifest: Path) -> dict[str, Any]:
    """Export the three networks of the detector whose manifest is at `manifest` beside its
    weight files and check them: the card's `compiled` entry; never raises. A refused export
    is deleted, so the store never holds a file that is not served."""
    from despliegue.artifacts import sha256_of
    from despliegue.compiled_runtime import OnnxModel, _reason, converter_versions, refused

    folder = manifest.parent
    entries = json.loads(manifest.read_text(encoding="utf-8"))["weights"]
    targets = {stage: folder / f"{stage}.onnx" for stage in STAGES}

    def discard() -> None:
        for target in targets.values():
            target.unlink(missing_ok=True)

    try:
        models = tensorflow_networks({stage: folder / entries[stage]["file"] for stage in STAGES})
        for stage in STAGES:
            export_network(models[stage], INPUT_SHAPES[stage], targets[stage])
    except Exception as exc:  # the converter does not handle a network
        discard()
        return refused(f"the ONNX export failed: {_reason(exc)}")
    differences: dict[str, float] = {}
    probes = 0
    try:
        for stage in STAGES:
            inputs = probe_inputs(stage)
            probes += sum(len(batch) for batch in inputs)
            differences[stage] = largest_difference(
                models[stage], OnnxModel(targets[stage]).outputs, inputs
            )
    except Exception as exc:  # the runtime cannot load or run what was written
        discard()
        return refused(f"ONNX Runtime cannot run the export: {_reason(exc)}")
    largest = max(differences.values())
    checked = {
        "probe_inputs": probes,
        "max_abs_difference": largest if math.isfinite(largest) else None,
        "max_abs_difference_by_network": {
            stage: value if math.isfinite(value) else None for stage, value in differences.items()
        },
        **converter_versions(),
    }
    if not largest <= TOLERANCE:
        discard()
        return refused(
            f"an export differs from its TensorFlow network by up to {largest:.3g} on "
            f"{probes} probe inputs (tolerance {TOLERANCE:g})",
            **checked,
        )
    files = {
        stage: {"file": path.name, "sha256": sha256_of(path)} for stage, path in targets.items()
    }
    return {"runtime": RUNTIME, "files": files, "tolerance": TOLERANCE, **checked}


# Serving ---------------------------------------------------------------------------------------


def serving_runtime(metadata: dict[str, Any], folder: Path, enabled: bool) -> tuple[str, str]:
    """(runtime, why) the stored detector is served with: ONNX Runtime when its three checked
    exports are present and unchanged and compiled serving is on; mtcnn on TensorFlow
    otherwise."""
    from despliegue.compiled_runtime import changed_file

    compiled = metadata.get("compiled")
    if not isinstance(compiled, dict):
        return "tensorflow", "stored without a compiled form (stored before compiled runtimes)"
    files = compiled.get("files")
    if compiled.get("runtime") != RUNTIME or not isinstance(files, dict):
        return "tensorflow", str(compiled.get("reason", "no verified compiled form"))
    if not enabled:
        return "tensorflow", "compiled serving is off (configuration.yaml tensorflow.compiled)"
    for stage in STAGES:
        entry = files.get(stage) or {}
        path = folder / str(entry.get("file", f"{stage}.onnx"))
        problem = changed_file(path, entry.get("sha256"))
        if problem:
            return "tensorflow", problem
    return RUNTIME, (
        f"exports checked against mtcnn's TensorFlow networks on {compiled.get('probe_inputs')} "
        f"inputs, largest difference {float(compiled.get('max_abs_difference') or 0.0):.2g}"
    )


def load_compiled(folder: Path, compiled: dict[str, Any], threads: int = 1) -> CompiledMTCNN:
    """The detector on the checked exports (serving_runtime has checked their sums)."""
    from despliegue.compiled_runtime import OnnxModel

    networks = {
        stage: OnnxModel(folder / compiled["files"][stage]["file"], threads).outputs
        for stage in STAGES
    }
    return CompiledMTCNN(networks["pnet"], networks["rnet"], networks["onet"])
