"""Heat flow (seed 000): thickness values and the runner's predictions -> HeatFlowResponse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from despliegue.contracts import ModelCard
from despliegue.schemas import HeatFlowResponse


def heat_flow_response(
    sediment_thickness_m: list[float], heat_flow: Sequence[float], card: ModelCard
) -> HeatFlowResponse:
    """One prediction per thickness, rounded to 3 decimals (a µW/m² is below the model's skill)."""
    return HeatFlowResponse(
        sediment_thickness_m=sediment_thickness_m,
        heat_flow_mw_m2=np.round(np.asarray(heat_flow, dtype=float), 3).tolist(),
        model=card.tag,
        model_tag=card.tag,
    )
