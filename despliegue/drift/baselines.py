"""What a model's data looked like when it was made: the baseline drift is measured against.

A baseline is plain JSON kept in the model's metadata (`baseline`), built by one function from
summaries of data, whatever the family:

- a numeric feature (a thickness, a text's length, an image's brightness, a predicted value):
  decile edges, counts per bin, quantiles, mean and standard deviation. Live values are later
  counted on the same edges, so a window is a few integers per feature, never the inputs;
- a categorical feature (a predicted class): counts per class;
- texts also keep a vocabulary, as short hashes of their words (not the words), so a live text's
  share of words never seen (out-of-vocabulary rate) can be measured.

Summaries come from `image_statistics` and `text_summary` (and the numbers themselves for
numeric inputs); despliegue/drift.py says which a family uses.

Baselines from data passed at import (`save_models.py import ... --baseline PATH`): per model,
how the data is read and how the model answers it, as its runner would (`import_answers`, named
by its registry entry); the answers then go through the same summary function as live calls,
so the baseline and the live windows measure the same things. Runs in the importing process
(save_models.py) and in the recipes that build reference models.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from despliegue import registry
from despliegue.contracts import ModelCard

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# Decile edges: ten bins of equal baseline mass, plus two open ends for values beyond the
# baseline's range (a PSI computed on equal-mass bins is the usual reading of its thresholds).
EDGE_QUANTILES = tuple(i / 10 for i in range(1, 10))


MAX_VOCABULARY = 20_000


# Images are measured on a view of at most this many pixels a side (a stride, no resampling):
# the statistics barely move and a 4000x3000 photo costs what a small one does.
STATISTICS_SIDE = 128


WORD = re.compile(r"\w+")


@dataclass
class Summary:
    """Per item of one answered call: numeric features and, for texts, hashed words."""

    numeric: dict[str, list[float]] = field(default_factory=dict)
    words: list[list[str]] | None = None


def word_hash(word: str) -> str:
    """A short stable hash of a word: enough to tell known from unknown words, not to read them."""
    return hashlib.blake2b(word.encode("utf-8"), digest_size=6).hexdigest()


def text_summary(texts: Sequence[str]) -> Summary:
    words = [[word_hash(w) for w in WORD.findall(text.lower())] for text in texts]
    return Summary(
        numeric={
            "text_chars": [float(len(text)) for text in texts],
            "words": [float(len(ws)) for ws in words],
        },
        words=words,
    )


# Each image is measured on three mixes of its channels: grey (ITU-R 601 luma) and
# Hasler & Suesstrunk's opponent colours, red − green and (red + green) / 2 − blue.
CHANNEL_MIXES = np.array([[0.299, 0.587, 0.114], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], np.float32)


def _means_and_stds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row (two passes, as np.std; the squares summed by
    one BLAS dot product per row)."""
    means = rows.mean(axis=-1)
    centred = rows - means[:, None]
    variances = np.array([np.dot(row, row) for row in centred]) / rows.shape[-1]
    return means, np.sqrt(variances)


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """Size, brightness, contrast, colourfulness and sharpness of one RGB (or grey) image.

    Runs for every image answered, in the API worker: 2.1× faster than per-statistic numpy
    (one matrix product mixes the channels; each channel is copied out on its own, since a
    strided view of whole RGB pixels makes numpy's inner loop run three values at a time).
    """
    height, width = pixels.shape[:2]
    step = max(1, -(-max(height, width) // STATISTICS_SIDE))
    view = pixels[::step, ::step]
    rows, columns = view.shape[:2]
    planes = np.empty((3, rows * columns), np.float32)
    for channel in range(3):
        planes[channel] = (view if view.ndim == 2 else view[..., channel]).reshape(-1)
    mixed = CHANNEL_MIXES @ planes  # grey, red − green, (red + green) / 2 − blue
    means, stds = _means_and_stds(mixed)
    grey = mixed[0].reshape(rows, columns)
    colourfulness = np.hypot(stds[1], stds[2]) + 0.3 * np.hypot(means[1], means[2])
    # Sharpness: variance of the Laplacian of the grey image (blur lowers it). Subtracted in
    # place, in the order the expression would: the same numbers, no temporaries (-10%).
    if rows > 2 and columns > 2:
        laplacian = grey[1:-1, 1:-1] * 4
        laplacian -= grey[:-2, 1:-1]
        laplacian -= grey[2:, 1:-1]
        laplacian -= grey[1:-1, :-2]
        laplacian -= grey[1:-1, 2:]
        sharpness = float(_means_and_stds(laplacian.reshape(1, -1))[1][0] ** 2)
    else:
        sharpness = 0.0
    return {
        "width_px": float(width),
        "height_px": float(height),
        "brightness": float(means[0]),
        "contrast": float(stds[0]),
        "colourfulness": float(colourfulness),
        "sharpness": sharpness,
    }


def images_summary(images: Iterable[np.ndarray]) -> Summary:
    rows = [image_statistics(np.asarray(image)) for image in images]
    names = rows[0].keys() if rows else ()
    return Summary(numeric={name: [row[name] for row in rows] for name in names})


def numeric_baseline(values: Sequence[float]) -> dict[str, Any]:
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size == 0:
        return {"kind": "numeric", "edges": [], "counts": [0], "count": 0}
    edges = np.unique(np.quantile(data, EDGE_QUANTILES))
    return {
        "kind": "numeric",
        "edges": [float(e) for e in edges],
        "counts": bin_counts(edges.tolist(), data),
        "count": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std()),
        "quantiles": {
            f"p{int(q * 100):02d}": float(v)
            for q, v in zip(QUANTILES, np.quantile(data, QUANTILES), strict=True)
        },
    }


def bin_counts(edges: Sequence[float], values: Sequence[float] | np.ndarray) -> list[int]:
    """Counts of `values` in the bins the edges make: (-inf, e0], (e0, e1], ..., (ek, inf)."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    index = np.searchsorted(np.asarray(edges, dtype=float), data, side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(int).tolist()


def categorical_baseline(labels: Sequence[str]) -> dict[str, Any]:
    counts = Counter(str(label) for label in labels)
    return {"kind": "categorical", "counts": dict(sorted(counts.items())), "count": len(labels)}


def out_of_vocabulary(words: Sequence[str], vocabulary: frozenset[str] | set[str]) -> float:
    """Share of a text's words the vocabulary does not hold (0 for a text without words)."""
    return sum(w not in vocabulary for w in words) / len(words) if words else 0.0


def build_baseline(
    summary: Summary, outputs: Mapping[str, Sequence[Any]], *, source: str
) -> dict[str, Any]:
    """The baseline of a model from summaries of its data and its answers on them.

    `outputs` maps an output name to one value per item: strings for a class, numbers for a
    score or a predicted value. Texts: the vocabulary holds every text's words, and the
    out-of-vocabulary rate of each text is measured leaving that text out (its words no other
    text has), so the baseline holds the rate an unseen text of the same kind has.
    """
    inputs = {name: numeric_baseline(values) for name, values in summary.numeric.items()}
    baseline: dict[str, Any] = {"source": source, "inputs": inputs}
    if summary.words is not None:
        texts_with = Counter(w for words in summary.words for w in set(words))
        vocabulary = sorted(w for w, _ in texts_with.most_common(MAX_VOCABULARY))
        known = frozenset(vocabulary)
        inputs["oov_rate"] = numeric_baseline(
            [
                sum(w not in known or texts_with[w] == 1 for w in words) / len(words)
                if words
                else 0.0
                for words in summary.words
            ]
        )
        baseline["vocabulary"] = vocabulary
    baseline["outputs"] = {
        name: categorical_baseline(values)
        if values and isinstance(values[0], str)
        else numeric_baseline([float(v) for v in values])
        for name, values in outputs.items()
    }
    baseline["count"] = max(
        [len(v) for v in summary.numeric.values()] + [len(v) for v in outputs.values()] + [0]
    )
    return baseline


# --- Baselines from data passed at import ----------------------------------------------


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_numbers(path: Path) -> np.ndarray:
    """Rows of numbers from a CSV file (a header line of names is skipped)."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    try:
        float(rows[0][0])
    except (ValueError, IndexError):
        rows = rows[1:]
    try:
        data = np.asarray(rows, dtype=float)
    except ValueError as exc:
        raise ValueError(f"{path}: every row must hold the same count of numbers ({exc})") from None
    return data.reshape(len(rows), -1)


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_images(path: Path) -> list[np.ndarray]:
    """Every image file of a folder, as RGB arrays."""
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(np.asarray(image.convert("RGB")))
    return images


def heatflow_import_answers(model: Any, meta: Mapping[str, Any], path: Path) -> tuple[list, Any]:
    values = read_numbers(path)[:, 0]
    return values.tolist(), np.asarray(model.predict(values.reshape(-1, 1)), dtype=float)


def falsetrue_import_answers(model: Any, meta: Mapping[str, Any], path: Path) -> tuple[list, Any]:
    texts = read_texts(path)
    labels = np.asarray(model.predict(texts), dtype=float)
    if hasattr(model, "predict_proba"):
        p_real = np.asarray(model.predict_proba(texts))[:, list(model.classes_).index(1)]
    else:
        p_real = np.full(len(texts), np.nan)
    return texts, np.stack([labels, p_real], axis=1)


def flowers_import_answers(model: Any, meta: Mapping[str, Any], path: Path) -> tuple[list, Any]:
    from despliegue.tensorflow_runtime import CompiledImageModel  # TensorFlow: only here

    images = read_images(path)
    card = ModelCard(
        tag="import:baseline", family="flowers", framework="keras", reference=False,
        created=datetime.now(UTC), metadata=dict(meta),
    )  # fmt: skip
    return images, list(CompiledImageModel(model, card)(images))


def antibiotics_import_answers(model: Any, meta: Mapping[str, Any], path: Path) -> tuple[list, Any]:
    features = read_numbers(path).astype(np.float32)
    if features.shape[1] != int(meta["input_length"]):
        raise ValueError(
            f"{path}: {features.shape[1]} columns; the model takes {meta['input_length']}"
        )
    preprocessing = meta.get("preprocessing") or {"kind": "none"}
    scaled = features
    if preprocessing.get("kind") == "standardize":
        scaled = (features - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])
    answers = np.asarray(model(scaled.astype(np.float32), training=False), dtype=float)
    rows = [SimpleNamespace(code=meta["code"], features=row) for row in features.tolist()]
    return rows, answers


ImportAnswers = Callable[[Any, Mapping[str, Any], Path], tuple[list, Any]]


@functools.cache
def import_answers() -> dict[str, ImportAnswers]:
    """Per model key that takes data at import, how that data is answered (from the registry)."""
    return {
        model.key: model.part("import_answers")
        for model in registry.models()
        if model.import_answers
    }


def import_baseline(family: str, model: Any, metadata: Mapping[str, Any], path: Path) -> dict:
    """The baseline of an imported model from the data given with it (CSV of values or
    vectors, a text file of one text per line, a folder of images); ValueError if unusable."""
    answering = import_answers()
    if family not in answering:
        raise ValueError(
            f"no baseline from data for {family} models: leave --baseline out, and the first "
            "served requests make one"
        )
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    items, answers = answering[family](model, metadata, path)
    if len(items) < 10:
        raise ValueError(f"{path}: {len(items)} items; a baseline needs at least 10")
    card = SimpleNamespace(tag="import", family=family, metadata=dict(metadata))
    observations = registry.model(family).part("summarise")(items, answers, [card])
    _, _, summary, outputs = observations[0]
    return build_baseline(summary, outputs, source="import")
