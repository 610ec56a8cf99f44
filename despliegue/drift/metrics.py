"""Prometheus series of what the models answer and of drift, per model tag (the API worker)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from despliegue.drift.summaries import Outputs

# Outputs that are scores or probabilities in [0, 1]; every other numeric output is a value.
SCORE_OUTPUTS = frozenset({"probability_real", "confidence", "score"})


SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


VALUE_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150, 200, 500, 1000)


@functools.cache
def service_metrics() -> ServiceMetrics:
    """The process's one set of these series (prometheus_client refuses a second)."""
    return ServiceMetrics()


class ServiceMetrics:
    """Per model tag: answers by class, histograms of scores and values, drift per feature.

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
            observe_all(self._child(kind, family, tag, name), values)

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


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for every value, as one increment per bucket that got any and
    one of the sum (prometheus_client has no bulk observe; in multiprocess mode each increment
    is a write to a shared file). Falls back to observing one by one if the client's
    internals (`_upper_bounds`, `_buckets`, `_sum`) ever change."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]  # observe(nan) lands in no bucket and poisons the sum
    if not array.size:
        return
    # A value goes to the first bucket whose upper bound is >= it (as observe() does).
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    for index in np.flatnonzero(counts):
        buckets[index].inc(int(counts[index]))
    total.inc(float(array.sum()))
