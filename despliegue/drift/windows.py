"""Live windows: a served model's answered items counted on its baseline's bins, and judged
against it. Pure functions on plain dicts (what the recorder keeps and writes to disk).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from despliegue.config import DriftSettings
from despliegue.drift.baselines import Summary, out_of_vocabulary
from despliegue.drift.statistics import judge_feature
from despliegue.drift.summaries import Outputs


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
        "opened_at": now(),
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
