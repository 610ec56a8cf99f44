"""Falsetrue runner (seed 004): the `falsetrue_classifier` text pipeline, batched over texts."""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from despliegue.config import settings
from despliegue.heap import freeze_startup_heap
from despliegue.lifecycle import Answered, RunnerModels, ServedModels, packs_served_models

FAMILY = settings().family("falsetrue")


def label_and_probability(model: Any, texts: list[str]) -> np.ndarray:
    """Rows of (label, probability of Real) per text; probability is NaN if unknown."""
    labels = np.asarray(model.predict(texts), dtype=float)
    if hasattr(model, "predict_proba"):
        real_column = list(model.classes_).index(1)
        p_real = np.asarray(model.predict_proba(texts), dtype=float)[:, real_column]
    else:
        p_real = np.full(len(texts), np.nan)
    return np.stack([labels, p_real], axis=1)


@bentoml.service(**settings().service_options("FalseTrueClassifier"))
@packs_served_models("falsetrue")
class FalseTrueClassifier:
    def __init__(self) -> None:
        self.models = ServedModels("falsetrue")
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, texts: list[str]) -> list[Answered]:
        """(label, probability of Real) per text, with the tag that answered."""
        return self.models.answer("falsetrue", texts, label_and_probability)

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
