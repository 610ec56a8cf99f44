"""Flowers (seed 002): class probabilities -> named flowers, or "Flor no identificada".

The class list (Oxford-102 id and name per output) comes from the model's card, so an imported
classifier with its own classes is answered without code changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from despliegue.contracts import ModelCard
from despliegue.schemas import FlowerAnswer, FlowerClass, FlowersResponse

UNIDENTIFIED_FLOWER = "Flor no identificada"


def flower_answer(
    probabilities: Sequence[float], classes: list[dict], top_k: int, threshold: float
) -> FlowerAnswer:
    """The top-k classes of one image; the top one is named only at or above the threshold."""
    row = np.asarray(probabilities, dtype=float)
    top = [
        FlowerClass(
            class_id=classes[i]["id"], name=classes[i]["name"], confidence=round(float(row[i]), 4)
        )
        for i in np.argsort(row)[::-1][:top_k]
    ]
    known = top[0].confidence >= threshold
    return FlowerAnswer(
        class_id=top[0].class_id if known else None,
        name=top[0].name if known else UNIDENTIFIED_FLOWER,
        confidence=top[0].confidence,
        top_k=top,
    )


def flowers_response(
    probabilities: Sequence[Sequence[float]], card: ModelCard, top_k: int, threshold: float
) -> FlowersResponse:
    classes = card.metadata["classes"]
    return FlowersResponse(
        predictions=[flower_answer(row, classes, top_k, threshold) for row in probabilities],
        threshold=threshold,
        model=card.tag,
        model_tag=card.tag,
    )
