"""Drift: does what a served model receives and answers still look like its baseline?

Capture. The runner calls the service makes are wrapped once (`observed`); after each answered
call, the model's summary function (its registry entry names it, one per runner method) turns
inputs and answers into per-item summaries, and `record(family, model_tag, inputs_summary, outputs)`
counts them on the baseline's bin edges into the model's open window. A window closes after
`drift.window_items` items and joins a bounded history. What is kept is histogram counts;
inputs are never kept. Windows are written to disk every `drift.persist_interval_s` seconds
and at shutdown, one file per API worker, so a restart keeps them.

Why not `bentoml.monitor`: it logs every input and output of every call to files (raw inputs,
which the audit log's privacy rule keeps out of any file unless an operator opts in), and
leaves statistics to an external system. Counting in process costs a few microseconds per call
and keeps nothing personal.

Statistics (scipy, already installed with scikit-learn): per numeric feature the population
stability index (PSI) on the baseline's decile bins and the two-sample Kolmogorov-Smirnov
statistic on those bins (a lower bound of the exact one, so its p-value errs towards "no
drift"); per class output chi-square on the two class tables, with PSI. Texts: length, word
count and out-of-vocabulary rate are numeric features; images: size, brightness, contrast,
colourfulness and sharpness. A feature drifts when PSI >= `drift.thresholds.psi` and its
p-value < `drift.thresholds.p_value`.

Models stored without a baseline (an import without `--baseline`) get one built from their
first `drift.baseline_items` answered items (the summaries of those items are held in memory
until then, not written to disk); `GET /models` says which source each baseline has.

`python -m despliegue.drift report FAMILY -o report.html` writes the HTML report
(despliegue/drift_report.py).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from despliegue import registry
from despliegue.baselines import (
    Summary,
    build_baseline,
    images_summary,
    out_of_vocabulary,
    text_summary,
)
from despliegue.config import DriftSettings

log = logging.getLogger("despliegue.drift")

Outputs = dict[str, list[Any]]
# (model tag, family, summary of the inputs, outputs by name) for one model's share of a call.
Observation = tuple[str, str, Summary, Outputs]
Summariser = Callable[[Sequence[Any], Any, Sequence[Any]], list[Observation]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- What each runner method's calls are summarised as --------------------------------------
# Each function gets the call's inputs, its answers and the runner's model cards, and returns
# one observation per model that answered.


def _only(cards: Sequence[Any], family: str) -> Any:
    return next(card for card in cards if card.family == family)


def heatflow_summary(values: Sequence[float], answers: Any, cards: Sequence[Any]) -> list:
    card = _only(cards, "heatflow")
    heat_flow = np.asarray(answers, dtype=float).reshape(-1).tolist()
    summary = Summary(numeric={"sediment_thickness_m": [float(v) for v in values]})
    return [(card.tag, "heatflow", summary, {"heat_flow_mw_m2": heat_flow})]


def falsetrue_summary(texts: Sequence[str], answers: Any, cards: Sequence[Any]) -> list:
    card = _only(cards, "falsetrue")
    rows = np.asarray(answers, dtype=float).reshape(-1, 2)
    outputs: Outputs = {"class": [str(int(label)) for label in rows[:, 0]]}
    if not np.isnan(rows[:, 1]).any():
        outputs["probability_real"] = rows[:, 1].tolist()
    return [(card.tag, "falsetrue", text_summary(texts), outputs)]


def flowers_summary(images: Sequence[np.ndarray], answers: Any, cards: Sequence[Any]) -> list:
    card = _only(cards, "flowers")
    probabilities = np.asarray([np.asarray(row, dtype=float) for row in answers])
    outputs: Outputs = {
        "class": [str(int(i)) for i in probabilities.argmax(axis=1)],
        "confidence": probabilities.max(axis=1).tolist(),
    }
    return [(card.tag, "flowers", images_summary(images), outputs)]


def face_detector_summary(images: Sequence[np.ndarray], answers: Any, cards: Sequence[Any]) -> list:
    card = _only(cards, "face_detector")
    outputs: Outputs = {"faces": [float(len(rows)) for rows in answers]}
    return [(card.tag, "faces", images_summary(images), outputs)]


def face_validator_summary(crops: Sequence[np.ndarray], answers: Any, cards: Sequence[Any]) -> list:
    card = _only(cards, "face_validator")
    return [(card.tag, "faces", images_summary(crops), {"score": [float(s) for s in answers]})]


def antibiotics_summary(rows: Sequence[Any], answers: Any, cards: Sequence[Any]) -> list:
    """One observation per antibiotic in the call: its vectors' features, its S/I/R answers."""
    by_code = {card.metadata.get("code"): card for card in cards}
    grouped: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
    for row, probabilities in zip(rows, answers, strict=True):
        features, answered = grouped.setdefault(row.code, ([], []))
        features.append(list(row.features))
        answered.append(list(probabilities))
    observations = []
    for code, (features, answered) in grouped.items():
        card = by_code[code]
        names = card.metadata.get("features") or [f"x{i:02d}" for i in range(len(features[0]))]
        classes = [str(c) for c in card.metadata["classes"]]
        columns = np.asarray(features, dtype=float).T
        p = np.asarray(answered, dtype=float)
        summary = Summary(numeric={n: c.tolist() for n, c in zip(names, columns, strict=True)})
        outputs: Outputs = {
            "class": [classes[i] for i in p.argmax(axis=1)],
            "confidence": p.max(axis=1).tolist(),
        }
        observations.append((card.tag, "antibiotics", summary, outputs))
    return observations


@dataclass(frozen=True)
class Monitored:
    """A runner method whose calls are captured: the runner attribute holding its model cards,
    and the function summarising a call."""

    family: str
    runner: str
    summarise: Summariser


def families() -> tuple[str, ...]:
    """The families whose traffic is monitored, as `/drift/{family}` names them: every family
    of the registry."""
    return tuple(family.name for family in registry.FAMILIES)


@functools.cache
def monitored_methods() -> dict[str, Monitored]:
    """One entry per batchable runner method the service calls (by model key, its coalescer's
    name there), derived from the registry (its summary function imported)."""
    return {
        model.key: Monitored(family.name, family.name, model.part("summarise"))
        for family in registry.FAMILIES
        for model in family.models
    }


def runners_of(family: str) -> list[str]:
    """The runner attributes whose models a drift family covers."""
    return [family] if family in families() else []


# --- Baselines from data passed at import (`save_models.py import ... --baseline PATH`) -----
# Per family: how the data is read and how the model answers it, as its runner would; the
# answers then go through the same summary function as live calls, so the baseline and the
# live windows measure the same things.

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_numbers(path: Path) -> np.ndarray:
    """Rows of numbers from a CSV file (a header line of names is skipped)."""
    import csv

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
    from despliegue.contracts import ModelCard
    from despliegue.tensorflow_runtime import CompiledImageModel

    images = read_images(path)
    card = ModelCard(
        tag="import:baseline", family="flowers", framework="keras", reference=False,
        created=datetime.now(UTC), metadata=dict(meta),
    )  # fmt: skip
    return images, list(CompiledImageModel(model, card)(images))


def antibiotics_import_answers(model: Any, meta: Mapping[str, Any], path: Path) -> tuple[list, Any]:
    from types import SimpleNamespace

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
    from types import SimpleNamespace

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
    observations = monitored_methods()[family].summarise(items, answers, [card])
    _, _, summary, outputs = observations[0]
    return build_baseline(summary, outputs, source="import")


# --- Statistics -------------------------------------------------------------------------------

PROPORTION_FLOOR = 1e-4  # an empty bin counts as this share, so PSI stays finite


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two count vectors over the same bins."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return float("nan")
    e = np.maximum(e / e.sum(), PROPORTION_FLOOR)
    a = np.maximum(a / a.sum(), PROPORTION_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def binned_ks(expected: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value from counts on the same bins."""
    from scipy.special import kolmogorov  # the limiting distribution's survival function

    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    n, m = e.sum(), a.sum()
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    statistic = float(np.max(np.abs(np.cumsum(e) / n - np.cumsum(a) / m)))
    return statistic, float(kolmogorov(statistic * np.sqrt(n * m / (n + m))))


def chi_square(expected: Mapping[str, int], actual: Mapping[str, int]) -> tuple[float, float]:
    """Chi-square test of homogeneity of two class tables (classes absent from both dropped)."""
    from scipy.stats import chi2_contingency

    classes = sorted(set(expected) | set(actual))
    table = np.array([[expected.get(c, 0) for c in classes], [actual.get(c, 0) for c in classes]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table.sum(axis=1).min() == 0:
        return 0.0, 1.0
    result = chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


def judge_feature(
    name: str, role: str, baseline: Mapping[str, Any], live: Any, settings: DriftSettings
) -> dict[str, Any]:
    """One feature of one window against its baseline: statistic, p-value, PSI, verdict."""
    limits = settings.thresholds
    if baseline["kind"] == "categorical":
        live_counts = dict(live)
        classes = sorted(set(baseline["counts"]) | set(live_counts))
        expected = [baseline["counts"].get(c, 0) for c in classes]
        actual = [live_counts.get(c, 0) for c in classes]
        statistic, p_value = chi_square(baseline["counts"], live_counts)
        shown: dict[str, Any] = {"test": "chi-square", "classes": classes}
    else:
        expected, actual = baseline["counts"], list(live)
        statistic, p_value = binned_ks(expected, actual)
        shown = {"test": "ks", "edges": baseline["edges"]}
    index = psi(expected, actual)
    items = int(sum(actual))
    if items < settings.min_items:
        verdict = "insufficient data"
    elif index >= limits.psi and p_value < limits.p_value:
        verdict = "drift"
    else:
        verdict = "no drift"
    return {
        "feature": name,
        "role": role,
        **shown,
        "statistic": _rounded(statistic),
        "p_value": _rounded(p_value),
        "psi": _rounded(index),
        "psi_threshold": limits.psi,
        "p_value_threshold": limits.p_value,
        "baseline_counts": expected,
        "live_counts": actual,
        "items": items,
        "verdict": verdict,
    }


def _rounded(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def overall(verdicts: Sequence[str]) -> str:
    if "drift" in verdicts:
        return "drift"
    if verdicts and all(v == "insufficient data" for v in verdicts):
        return "insufficient data"
    return "no drift" if verdicts else "insufficient data"


# --- Windows ------------------------------------------------------------------------------------


def usable_baseline(baseline: Any) -> Any:
    """A card's baseline in the form this version reads, else None: a model stored by an earlier
    version (its baseline has no `inputs`/`outputs`) gets one from its first served requests."""
    if isinstance(baseline, Mapping) and {"inputs", "outputs"} <= baseline.keys():
        return baseline
    return None


def empty_window(baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Zero counts on the baseline's bins, for every input and output feature."""

    def zeros(feature: Mapping[str, Any]) -> Any:
        return {} if feature["kind"] == "categorical" else [0] * len(feature["counts"])

    return {
        "opened_at": _now(),
        "items": 0,
        "inputs": {name: zeros(f) for name, f in baseline["inputs"].items()},
        "outputs": {name: zeros(f) for name, f in baseline["outputs"].items()},
    }


def add_to_window(
    window: dict[str, Any], baseline: Mapping[str, Any], summary: Summary, outputs: Outputs
) -> int:
    """Count one call's summaries into a window; returns the number of items it held."""
    numeric = dict(summary.numeric)
    if summary.words is not None and "vocabulary" in baseline:
        known = _vocabulary(baseline)
        numeric["oov_rate"] = [out_of_vocabulary(words, known) for words in summary.words]
    for role, values_by_name in (("inputs", numeric), ("outputs", outputs)):
        for name, values in values_by_name.items():
            feature = baseline[role].get(name)
            if feature is None:
                continue
            if feature["kind"] == "categorical":
                counts = window[role][name]
                for value in values:
                    counts[str(value)] = counts.get(str(value), 0) + 1
            else:
                # bisect on a short list: a call holds few values, and numpy's overhead per
                # call is larger than the work here.
                counts, edges = window[role][name], feature["edges"]
                for value in values:
                    if math.isfinite(value):
                        counts[bisect.bisect_left(edges, value)] += 1
    items = max([len(v) for v in numeric.values()] + [len(v) for v in outputs.values()] + [0])
    window["items"] += items
    return items


_VOCABULARIES: dict[int, frozenset[str]] = {}


def _vocabulary(baseline: Mapping[str, Any]) -> frozenset[str]:
    key = id(baseline["vocabulary"])
    if key not in _VOCABULARIES:
        _VOCABULARIES[key] = frozenset(baseline["vocabulary"])
    return _VOCABULARIES[key]


def judge_window(
    baseline: Mapping[str, Any], window: Mapping[str, Any], settings: DriftSettings
) -> list[dict[str, Any]]:
    return [
        judge_feature(name, role, baseline[role][name], counts, settings)
        for role in ("inputs", "outputs")
        for name, counts in window[role].items()
        if name in baseline[role]
    ]


# --- Capture ----------------------------------------------------------------------------------


@dataclass
class ModelState:
    """Everything kept about one served model: its family, baseline, open and closed windows."""

    family: str
    baseline: dict[str, Any] | None
    open: dict[str, Any] | None
    closed: list[dict[str, Any]]
    # Summaries of the first answered items, while a model without a baseline collects them.
    pending: tuple[Summary, Outputs] | None = None


class Recorder:
    """The live windows of every model this API worker has answered with."""

    def __init__(self, settings: DriftSettings, storage: Path, worker: str) -> None:
        self.settings = settings
        self.storage = storage
        self.path = storage / f"live-{worker}.json"
        self.models: dict[str, ModelState] = {}
        self.saved_at = time.monotonic()
        self.metrics = service_metrics() if settings.capture else None
        self._load()

    def attach(self, tag: str, family: str, baseline: dict[str, Any] | None) -> ModelState:
        """The state of a model, created on first sight with the baseline its card holds (or
        one this recorder built earlier from first requests)."""
        state = self.models.get(tag)
        if state is None:
            state = ModelState(family=family, baseline=None, open=None, closed=[])
            self.models[tag] = state
        if state.baseline is None:
            state.baseline = usable_baseline(baseline) or self._learned_baseline(tag)
        if state.baseline is not None and state.open is None:
            state.open = empty_window(state.baseline)
        return state

    def record(
        self,
        family: str,
        model_tag: str,
        inputs_summary: Summary,
        outputs: Outputs,
        baseline: dict[str, Any] | None = None,
    ) -> None:
        """Count one answered call of one model (the only way anything enters a window)."""
        state = self.attach(model_tag, family, baseline)
        if self.metrics is not None:
            self.metrics.observe(family, model_tag, outputs)
        if state.baseline is None:
            self._collect_baseline(model_tag, state, inputs_summary, outputs)
        else:
            assert state.open is not None
            add_to_window(state.open, state.baseline, inputs_summary, outputs)
            if state.open["items"] >= self.settings.window_items:
                self._close(model_tag, state)
        if time.monotonic() - self.saved_at >= self.settings.persist_interval_s:
            self.save()

    def _close(self, tag: str, state: ModelState) -> None:
        assert state.open is not None and state.baseline is not None
        window = {**state.open, "closed_at": _now()}
        judged = judge_window(state.baseline, window, self.settings)
        window["psi"] = {f"{j['role']}.{j['feature']}": j["psi"] for j in judged}
        window["verdict"] = overall([j["verdict"] for j in judged])
        state.closed = [*state.closed, window][-self.settings.history_windows :]
        state.open = empty_window(state.baseline)
        if self.metrics is not None:
            self.metrics.drift(state.family, tag, judged)

    def _collect_baseline(
        self, tag: str, state: ModelState, summary: Summary, outputs: Outputs
    ) -> None:
        if state.pending is None:
            state.pending = (Summary(numeric={}, words=None), {})
        held, held_outputs = state.pending
        for name, values in summary.numeric.items():
            held.numeric.setdefault(name, []).extend(values)
        if summary.words is not None:
            held.words = [*(held.words or []), *summary.words]
        for name, values in outputs.items():
            held_outputs.setdefault(name, []).extend(values)
        collected = max([len(v) for v in held_outputs.values()] + [0])
        if collected >= self.settings.baseline_items:
            source = f"first {collected} requests"
            state.baseline = build_baseline(held, held_outputs, source=source)
            state.pending = None
            state.open = empty_window(state.baseline)
            path = self.storage / "baselines" / f"{_file_name(tag)}.json"
            _write_json(path, {"tag": tag, "baseline": state.baseline})

    def _learned_baseline(self, tag: str) -> dict[str, Any] | None:
        path = self.storage / "baselines" / f"{_file_name(tag)}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads(path.read_text(encoding="utf-8"))["baseline"]
        return None

    def save(self) -> None:
        """Write every model's open and closed windows (not the baselines or pending items)."""
        self.saved_at = time.monotonic()
        state = {
            tag: {"family": s.family, "open": s.open, "closed": s.closed}
            for tag, s in self.models.items()
            if s.open is not None
        }
        try:
            _write_json(self.path, {"saved_at": _now(), "models": state})
        except OSError as exc:
            log.warning("cannot save the drift windows to %s: %s", self.path, exc)

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))["models"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable drift windows in %s: %s", self.path, exc)
            return
        for tag, s in saved.items():
            self.models[tag] = ModelState(
                family=s["family"], baseline=None, open=s["open"], closed=s["closed"]
            )

    def report(self, family: str, tags: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
        """The drift of a family's served models (tag -> baseline from its card)."""
        models = []
        for tag, card_baseline in tags.items():
            state = self.attach(tag, family, card_baseline)
            models.append(self._model_report(tag, state))
        verdict = overall([m["verdict"] for m in models])
        return {
            "family": family,
            "verdict": verdict,
            "checked_at": _now(),
            "window_items": self.settings.window_items,
            "thresholds": self.settings.thresholds.model_dump(),
            "models": models,
        }

    def _model_report(self, tag: str, state: ModelState) -> dict[str, Any]:
        baseline = state.baseline
        answer: dict[str, Any] = {"model_tag": tag, "baseline": baseline_facts(baseline)}
        if baseline is None:
            held = state.pending[1] if state.pending else {}
            collected = max([len(v) for v in held.values()] + [0])
            answer.update(
                verdict="insufficient data",
                window=None,
                features=[],
                note=f"collecting a baseline: {collected} of {self.settings.baseline_items} items",
                history=[],
            )
            return answer
        assert state.open is not None
        # The last closed window is judged; before any closes, the open one.
        window, kind = (state.closed[-1], "closed") if state.closed else (state.open, "open")
        features = judge_window(baseline, window, self.settings)
        answer.update(
            verdict=overall([f["verdict"] for f in features]),
            window={
                "state": kind,
                "items": window["items"],
                "opened_at": window["opened_at"],
                "closed_at": window.get("closed_at"),
                "number": len(state.closed) if kind == "closed" else len(state.closed) + 1,
            },
            open_window_items=state.open["items"],
            features=[f for f in features if f["role"] == "inputs"],
            predictions=[f for f in features if f["role"] == "outputs"],
            history=[
                {"closed_at": w["closed_at"], "verdict": w["verdict"], "psi": w["psi"]}
                for w in state.closed
            ],
        )
        return answer


def baseline_facts(baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """What `GET /models` says of a baseline: where it came from and how many items made it."""
    if baseline is None:
        return {"source": "none yet", "count": 0}
    return {"source": baseline.get("source", "reference"), "count": baseline.get("count", 0)}


def _file_name(tag: str) -> str:
    return tag.replace(":", "-").replace("/", "-")


def _write_json(path: Path, content: Any) -> None:
    """Write a file whole or not at all (a crash mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(content, separators=(",", ":")), encoding="utf-8")
    partial.replace(path)


# --- Metrics ---------------------------------------------------------------------------------

# Outputs that are scores or probabilities in [0, 1]; every other numeric output is a value.
SCORE_OUTPUTS = frozenset({"probability_real", "confidence", "score"})
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
VALUE_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150, 200, 500, 1000)


@functools.cache
def service_metrics() -> ServiceMetrics:
    """The process's one set of these series (prometheus_client refuses a second)."""
    return ServiceMetrics()


class ServiceMetrics:
    """Per model tag: answers by class, histograms of scores and values, drift per feature;
    and refused inputs per route and reason.

    Created in the API worker, after BentoML has pointed prometheus_client at its
    multiprocess folder (so these series reach `/metrics` with BentoML's own)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["family", "model_tag"]
        self.predictions = Counter(
            "despliegue_predictions", "Answered items by predicted class", [*labels, "predicted"]
        )
        self.scores = Histogram(
            "despliegue_prediction_score",
            "Scores and probabilities in [0, 1] the models answered",
            [*labels, "output"],
            buckets=SCORE_BUCKETS,
        )
        self.values = Histogram(
            "despliegue_prediction_value",
            "Values the regression and count outputs answered",
            [*labels, "output"],
            buckets=VALUE_BUCKETS,
        )
        self.psi = Gauge(
            "despliegue_drift_psi",
            "PSI of the last closed window against the baseline",
            [*labels, "feature"],
            multiprocess_mode="livemostrecent",
        )
        self.drifted = Gauge(
            "despliegue_drift_detected",
            "1 when the feature drifted in the last closed window",
            [*labels, "feature"],
            multiprocess_mode="livemostrecent",
        )
        self.rejections = Counter(
            "despliegue_input_rejections", "Refused inputs by route and reason", ["route", "reason"]
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def observe(self, family: str, tag: str, outputs: Outputs) -> None:
        for name, values in outputs.items():
            if not values:
                continue
            if isinstance(values[0], str):
                for label, count in _tally(values).items():
                    self._child(self.predictions, family, tag, label).inc(count)
                continue
            # A [0, 1] output is a score, anything else a value (a count of faces is a value
            # even when it happens to be 0 or 1).
            kind = self.scores if name in SCORE_OUTPUTS else self.values
            histogram = self._child(kind, family, tag, name)
            for value in values:
                histogram.observe(value)

    def _child(self, metric: Any, *labels: str) -> Any:
        """The labelled series, looked up once (prometheus_client's labels() costs more than
        an increment)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def drift(self, family: str, tag: str, judged: Sequence[Mapping[str, Any]]) -> None:
        for feature in judged:
            name = f"{feature['role']}.{feature['feature']}"
            if feature["psi"] is not None:
                self._child(self.psi, family, tag, name).set(feature["psi"])
            drifted = float(feature["verdict"] == "drift")
            self._child(self.drifted, family, tag, name).set(drifted)


def _tally(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# --- The service's side ------------------------------------------------------------------------


def worker_name() -> str:
    """This API worker's index (stable across restarts, unlike its pid)."""
    from bentoml import server_context

    return str(server_context.worker_index or 1)


def storage_dir(settings: DriftSettings) -> Path:
    if settings.storage_dir:
        return Path(settings.storage_dir)
    from despliegue.artifacts import bentoml_home

    return Path(bentoml_home()) / "drift"


CardsOf = Callable[[str], Awaitable[Sequence[Any]]]


def observed(
    name: str, call: Callable[[Any], Awaitable[Any]], cards_of: CardsOf, recorder: Recorder
) -> Callable[[Any], Awaitable[Any]]:
    """`call` (a runner method as the service calls it), recording each answered call.

    Monitoring never fails a request: a summary that cannot be taken is logged and skipped.
    """
    if not recorder.settings.capture:
        return call
    entry = monitored_methods()[name]

    async def recorded(items: Any) -> Any:
        answers = await call(items)
        try:
            # Each answer item names the model that gave it (despliegue/lifecycle.py: served,
            # canary): each model's share of the call is summarised against its own baseline.
            cards = {card.tag: card for card in await cards_of(entry.runner)}
            shares: dict[str, list[int]] = {}
            for index, answered in enumerate(answers):
                shares.setdefault(answered.model_tag, []).append(index)
            for tag, indices in shares.items():
                card = cards.get(tag)
                if card is None:  # a model swapped out while this call ran: not monitored
                    continue
                share = [items[i] for i in indices]
                answered = [answers[i].answer for i in indices]
                for _, family, summary, outputs in entry.summarise(share, answered, [card]):
                    recorder.record(family, tag, summary, outputs, card.metadata.get("baseline"))
        except Exception:
            log.exception("drift capture of a %s call failed", name)
        return answers

    return recorded


async def family_report(family: str, cards_of: CardsOf, recorder: Recorder) -> dict[str, Any]:
    """`GET /drift/{family}`: every served model of the family against its baseline."""
    cards = [card for runner in runners_of(family) for card in await cards_of(runner)]
    return recorder.report(family, {card.tag: card.metadata.get("baseline") for card in cards})


class RejectionMetrics:
    """ASGI middleware counting refused inputs per route and reason (the error body's `type`,
    e.g. `missing`, `too_long`, `value_error`; or the status when the body names none)."""

    STATUSES = frozenset({400, 405, 408, 413, 415, 422})

    def __init__(self, app: Any, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status in self.STATUSES:
                if len(body) < 65536:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self.count(scope["path"], status, bytes(body))
            await send(message)

        await self.app(scope, receive, watch)

    def count(self, path: str, status: int, body: bytes) -> None:
        reason = str(status)
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            reason = str(json.loads(body)["detail"][0]["type"])
        route = path if path in self.routes else "other"
        service_metrics().rejections.labels(route, reason).inc()


def main(argv: Sequence[str] | None = None) -> int:
    from despliegue.drift_report import main as report_main

    return report_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
