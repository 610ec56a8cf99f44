"""Falsetrue runner (seed 004): the `falsetrue_classifier` text pipeline, batched over texts.

The model gets the input shape it was fitted on (a named DataFrame column or a list of
strings; despliegue/sklearn_input.py). Which stored model answers follows the lifecycle state
(despliegue/lifecycle/)."""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from despliegue.config import settings
from despliegue.contracts import Answered, ModelCard, RunnerModels
from despliegue.heap import settle_worker_heap
from despliegue.lifecycle.pinning import with_pinned_twins
from despliegue.lifecycle.plans import packs_served_models
from despliegue.lifecycle.swap import ServedModels
from despliegue.sklearn_input import OneColumnInput, SharedTransforms, text_column
from despliegue.startup import serve_until_callers_stop

FAMILY = settings().family("falsetrue")


def with_input(model: Any, card: ModelCard) -> tuple[SharedTransforms, OneColumnInput]:
    input_column = card.metadata.get("input_column")
    return SharedTransforms(model), OneColumnInput(model, text_column, input_column)


def label_and_probability(
    prepared: tuple[SharedTransforms, OneColumnInput], texts: list[str]
) -> np.ndarray:
    """Rows of (label, probability of Real) per text; probability is NaN if unknown. The
    label is the model's own `predict` (not the likelier class: they differ for some models)."""
    model, model_input = prepared
    features = model.features(model_input(texts))
    labels = np.asarray(model.estimator.predict(features), dtype=float)
    if hasattr(model.estimator, "predict_proba"):
        real_column = list(model.estimator.classes_).index(1)
        p_real = np.asarray(model.estimator.predict_proba(features), dtype=float)[:, real_column]
    else:
        p_real = np.full(len(texts), np.nan)
    return np.stack([labels, p_real], axis=1)


@bentoml.service(**settings().service_options("FalseTrueClassifier"))
@packs_served_models("falsetrue")
@with_pinned_twins
class FalseTrueClassifier:
    def __init__(self) -> None:
        self.models = ServedModels("falsetrue", prepare=with_input)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        settle_worker_heap()

    @bentoml.api(**FAMILY.batching.api_options())
    def classify(self, texts: list[str]) -> list[Answered]:
        """One TextVerdictRow per text (despliegue/contracts.py), with the tag that answered."""
        return self.models.answer("falsetrue", texts, label_and_probability)

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
