"""Antibiotics (seed 003): which panel models a request asks, and their probabilities -> S / I / R.

The panel is what the runner serves, by code (from each model's card); a request names codes
or takes the whole panel. Every mistake found here is a ClientError naming the field: an
unknown code, a vector of the wrong length for a model, no model served at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

import numpy as np

from despliegue.config import PanelConfig
from despliegue.contracts import ModelCard, PanelRow
from despliegue.errors import ClientError
from despliegue.schemas import (
    AntibioticPanelListing,
    AntibioticResult,
    AntibioticsResponse,
    PanelEntry,
    Prediction,
)


def panel_of(cards: Iterable[ModelCard], panel: PanelConfig) -> dict[str, ModelCard]:
    """The served antibiotic models by code (the code read from the model name)."""
    return {panel.code_of(card.tag.partition(":")[0]) or card.tag: card for card in cards}


def requested_codes(
    served: dict[str, ModelCard],
    panel: PanelConfig,
    features: list[list[float]],
    codes: list[str] | None,
) -> list[str]:
    """The codes to answer for, in request order without repeats (when none are named, every
    served one that takes vectors of the length sent), after checking each is served and
    takes vectors of the length sent."""
    if not served:
        raise ClientError(
            ["codes"],
            "no antibiotic model is served: import one (python save_models.py import "
            f"{panel.model_name('CODE')} SOURCE) or build the reference panel, then restart",
            status=HTTPStatus.NOT_FOUND,
        )
    wanted = list(dict.fromkeys(codes)) if codes else models_for_length(served, features)
    for index, code in enumerate(wanted):
        if code not in served:
            raise ClientError(
                ["codes", index],
                f"unknown antibiotic {code!r}; available: {', '.join(sorted(served))}",
            )
    for code in wanted:
        expected = int(served[code].metadata["input_length"])
        for index, vector in enumerate(features):
            if len(vector) != expected:
                raise ClientError(
                    ["features", index],
                    f"{served[code].tag} ({code}) expects {expected} values, got {len(vector)}",
                )
    return wanted


def models_for_length(panel: dict[str, ModelCard], features: list[list[float]]) -> list[str]:
    """What a request without `codes` asks: every panel model whose input length is the
    vectors' length (the panel may mix models of different lengths). All vectors of such a
    request must have one length; if no model takes it, 422 lists the lengths by code."""
    length = len(features[0])
    for index, vector in enumerate(features):
        if len(vector) != length:
            raise ClientError(
                ["features", index],
                f"without codes, every vector must have the same length (vector 0 has "
                f"{length} values, this one {len(vector)}): send codes, or one length per request",
            )
    lengths = {code: int(card.metadata["input_length"]) for code, card in panel.items()}
    matching = [code for code, expected in lengths.items() if expected == length]
    if not matching:
        listed = ", ".join(f"{code}: {expected}" for code, expected in sorted(lengths.items()))
        raise ClientError(
            ["features", 0],
            f"no antibiotic model takes {length} values per vector; input lengths by code: "
            f"{listed}",
        )
    return matching


def panel_rows(codes: list[str], features: list[list[float]]) -> list[PanelRow]:
    """What the runner is asked: every vector for every code, code by code."""
    return [PanelRow(code=code, features=vector) for code in codes for vector in features]


def antibiotics_response(
    served: dict[str, ModelCard],
    codes: list[str],
    vectors: int,
    probabilities: Sequence[Sequence[float]],
) -> AntibioticsResponse:
    """The runner's probabilities (in `panel_rows` order) as S / I / R per code and vector."""
    if len(probabilities) != len(codes) * vectors:
        raise ValueError(f"{len(probabilities)} answers for {len(codes)} codes x {vectors}")
    answers = iter(probabilities)
    results = []
    for code in codes:
        card = served[code]
        classes = card.metadata["classes"]
        predictions = []
        for _ in range(vectors):
            p = next(answers)
            by_class = {c: round(float(v), 4) for c, v in zip(classes, p, strict=True)}
            predictions.append(
                Prediction(predicted_class=classes[int(np.argmax(p))], probabilities=by_class)
            )
        results.append(
            AntibioticResult(
                code=code,
                model=card.tag,
                model_tag=card.tag,
                version=card.tag.partition(":")[2],
                registered_version=card.labels.get("mlflow_version"),
                predictions=predictions,
            )
        )
    return AntibioticsResponse(results=results)


def panel_listing(served: dict[str, ModelCard], panel: PanelConfig) -> AntibioticPanelListing:
    """GET /antibiotics: one entry per served code, with its input length, classes and origin."""
    entries = [
        PanelEntry(
            code=code,
            model=card.tag,
            version=card.tag.partition(":")[2],
            input_length=int(card.metadata["input_length"]),
            classes=card.metadata["classes"],
            features=card.metadata.get("features"),
            preprocessing=(card.metadata.get("preprocessing") or {}).get("kind", "none"),
            reference=card.reference,
            source={k: v for k, v in card.labels.items() if k not in {"family", "reference"}},
        )
        for code, card in sorted(served.items())
    ]
    return AntibioticPanelListing(model_pattern=panel.model_pattern, antibiotics=entries)
