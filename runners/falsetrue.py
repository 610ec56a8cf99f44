"""Falsetrue runner (seed 004): the `falsetrue_classifier` text pipeline, batched over texts."""

from __future__ import annotations

import bentoml
import numpy as np

from despliegue.artifacts import ModelCard, load_served_model
from despliegue.config import settings
from despliegue.heap import freeze_startup_heap

FAMILY = settings().family("falsetrue")


@bentoml.service(**settings().service_options("FalseTrueClassifier"))
class FalseTrueClassifier:
    model_ref = bentoml.models.BentoModel(FAMILY.tag)

    def __init__(self) -> None:
        self.model, self.card = load_served_model(type(self).model_ref)
        self.has_probabilities = hasattr(self.model, "predict_proba")
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, texts: list[str]) -> np.ndarray:
        """One TextVerdictRow per text (despliegue/contracts.py): label, probability of Real."""
        labels = np.asarray(self.model.predict(texts), dtype=float)
        if self.has_probabilities:
            real_column = list(self.model.classes_).index(1)
            p_real = np.asarray(self.model.predict_proba(texts), dtype=float)[:, real_column]
        else:
            p_real = np.full(len(texts), np.nan)
        return np.stack([labels, p_real], axis=1)

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return [self.card]
