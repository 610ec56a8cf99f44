"""Falsetrue runner (seed 004): the `falsetrue_classifier` text pipeline, batched over texts.

The model gets the input shape it was fitted on (a named DataFrame column or a list of
strings; despliegue/sklearn_input.py)."""

from __future__ import annotations

import bentoml
import numpy as np

from despliegue.artifacts import ModelCard, load_served_model
from despliegue.config import settings
from despliegue.heap import freeze_startup_heap
from despliegue.sklearn_input import OneColumnInput, text_column
from despliegue.startup import serve_until_callers_stop

FAMILY = settings().family("falsetrue")


@bentoml.service(**settings().service_options("FalseTrueClassifier"))
class FalseTrueClassifier:
    model_ref = bentoml.models.BentoModel(FAMILY.tag)

    def __init__(self) -> None:
        self.model, self.card = load_served_model(type(self).model_ref)
        self.model_input = OneColumnInput(self.model, text_column)
        self.has_probabilities = hasattr(self.model, "predict_proba")
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        freeze_startup_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, texts: list[str]) -> np.ndarray:
        """One TextVerdictRow per text (despliegue/contracts.py): label, probability of Real."""
        inputs = self.model_input(texts)
        labels = np.asarray(self.model.predict(inputs), dtype=float)
        if self.has_probabilities:
            real_column = list(self.model.classes_).index(1)
            p_real = np.asarray(self.model.predict_proba(inputs), dtype=float)[:, real_column]
        else:
            p_real = np.full(len(texts), np.nan)
        return np.stack([labels, p_real], axis=1)

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return [self.card]
