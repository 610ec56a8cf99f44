"""What each runner method's calls are summarised as, for drift: one function per model, named
by its registry entry (`summarise`, despliegue/registry.py).

Each function gets the call's inputs, its answers and the runner's model cards, and returns one
observation per model that answered: (model tag, drift family, summary of the inputs, outputs
by name). Runs in the API worker, after the answer has left (despliegue/drift/capture.py), and
in the importing process, on data given with an import (despliegue/drift/baselines.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from despliegue.drift.baselines import Summary, images_summary, text_summary

Outputs = dict[str, list[Any]]


# (model tag, family, summary of the inputs, outputs by name) for one model's share of a call.
Observation = tuple[str, str, Summary, Outputs]


Summariser = Callable[[Sequence[Any], Any, Sequence[Any]], list[Observation]]


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
