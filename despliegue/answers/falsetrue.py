"""Falsetrue (seed 004): the runner's text verdict rows -> FalseTrueResponse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from despliegue.contracts import ModelCard, TextVerdictRow
from despliegue.schemas import FalseTrueResponse


def falsetrue_response(rows: Sequence[Sequence[float]], card: ModelCard) -> FalseTrueResponse:
    """Labels as 0/1 and the probability of Real (null where the model gives none)."""
    verdicts = np.asarray(rows, dtype=float).reshape(-1, TextVerdictRow.WIDTH)
    return FalseTrueResponse(
        is_falsetrue=[int(label) for label in verdicts[:, TextVerdictRow.LABEL]],
        probability_real=[
            None if np.isnan(p) else round(float(p), 4)
            for p in verdicts[:, TextVerdictRow.PROBABILITY_REAL]
        ],
        model=card.tag,
        model_tag=card.tag,
    )
