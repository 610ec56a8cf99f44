"""Drift statistics on histogram counts (scipy, already installed with scikit-learn): per
numeric feature the population stability index (PSI) on the baseline's decile bins and the
two-sample Kolmogorov-Smirnov statistic on those bins (a lower bound of the exact one, so its
p-value errs towards "no drift"); per class output chi-square on the two class tables, with PSI.
A feature drifts when PSI >= `drift.thresholds.psi` and its p-value < `drift.thresholds.p_value`.
Pure functions; the API worker calls them when a window closes or a report is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from despliegue.config import DriftSettings

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
