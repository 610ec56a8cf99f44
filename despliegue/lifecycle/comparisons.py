"""How a shadow model's answers are compared with the served model's, one function per kind of
answer; the registry names each model's (despliegue/registry.py). Runs in the runner process,
on the shadow's thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from despliegue import registry
from despliegue.config import settings


def same_value(served: Any, other: Any) -> tuple[bool, float]:
    """A regression answer: agreement within 5 % (or 0.5 units near zero)."""
    a, b = float(served), float(other)
    return abs(a - b) <= max(0.5, 0.05 * abs(a)), abs(a - b)


def same_label(served: Any, other: Any) -> tuple[bool, float]:
    """(label, probability) rows: the label agrees; the difference is in the probability."""
    a, b = np.asarray(served, dtype=float), np.asarray(other, dtype=float)
    difference = abs(a[1] - b[1]) if not (np.isnan(a[1]) or np.isnan(b[1])) else 0.0
    return bool(a[0] == b[0]), float(difference)


def same_class(served: Any, other: Any) -> tuple[bool, float]:
    """Class probabilities: the top class agrees; the mean absolute difference per class."""
    a, b = np.asarray(served, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape:
        return False, float("nan")
    return bool(np.argmax(a) == np.argmax(b)), float(np.mean(np.abs(a - b)))


def same_faces(served: Any, other: Any) -> tuple[bool, float]:
    """Detections: the same number of faces; the difference in that number."""
    a, b = len(np.asarray(served)), len(np.asarray(other))
    return a == b, float(abs(a - b))


def same_verdict(served: Any, other: Any) -> tuple[bool, float]:
    """A score against the family's threshold: the same side of it agrees."""
    threshold = float(settings().family("face_validator").threshold or 0.5)
    a, b = float(served), float(other)
    return (a >= threshold) == (b >= threshold), abs(a - b)


Comparison = Callable[[Any, Any], tuple[bool, float]]


@functools.cache
def comparisons() -> dict[str, Comparison]:
    """Every model key's comparison, derived from the registry (each imported once)."""
    return {model.key: model.part("compare") for model in registry.models()}


def comparison(key: str) -> Comparison:
    """The comparison of a family key; `antibiotics.AMK` is a member of the `antibiotics` panel."""
    return comparisons()[key.partition(".")[0]]
