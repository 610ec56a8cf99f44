"""Antibiotic panel runner (seed 003): one model per antibiotic, `modelo_<CODE>_NM`.

The panel is every stored `modelo_<CODE>_NM` configuration selects plus every antibiotic the
lifecycle state file promotes (despliegue/lifecycle/): a new antibiotic is an import and a
`save_models.py promote antibiotics.<CODE> TAG`, picked up by the running service. Each served
model is a BentoModel class attribute (`packs_served_models`), which is how `bentoml build`
packs exactly the served panel. Input length, class labels and preprocessing come from each
model's metadata.

Batching: one batchable method takes rows of (code, features). Concurrent requests (and the
several antibiotics of one request) land in one batch; inside it, rows are grouped by code and
each model is called once on its stacked rows. One method instead of one per model keeps a
request for the whole panel a single call to this process.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import bentoml
import numpy as np

from despliegue.compiled_runtime import OnnxModel
from despliegue.config import settings
from despliegue.contracts import Answered, ModelCard, PanelRow, RunnerModels
from despliegue.heap import settle_worker_heap
from despliegue.lifecycle.pinning import with_pinned_twins
from despliegue.lifecycle.plans import packs_served_models
from despliegue.lifecycle.swap import ServedModels
from despliegue.startup import serve_until_callers_stop

PANEL = settings().panel("antibiotics")


@dataclass(frozen=True)
class PanelMember:
    """One antibiotic's loaded model and how to feed it (from its metadata)."""

    model: Any
    mean: np.ndarray | None
    std: np.ndarray | None

    @classmethod
    def prepare(cls, model: Any, card: ModelCard) -> PanelMember:
        preprocessing = card.metadata.get("preprocessing") or {"kind": "none"}
        standardize = preprocessing.get("kind") == "standardize"
        return cls(
            model=model,
            mean=np.asarray(preprocessing["mean"], np.float32) if standardize else None,
            std=np.asarray(preprocessing["std"], np.float32) if standardize else None,
        )

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        if self.mean is not None and self.std is not None:
            features = (features - self.mean) / self.std
        if isinstance(self.model, OnnxModel):  # the checked export (compiled_runtime.py)
            return np.asarray(self.model(features), dtype=float)
        return np.asarray(self.model(features, training=False), dtype=float)


def probabilities(member: PanelMember, features: np.ndarray) -> np.ndarray:
    return member.probabilities(features)


@bentoml.service(**settings().service_options("AntibioticPanel"))
@packs_served_models("antibiotics")
@with_pinned_twins
class AntibioticPanel:
    def __init__(self) -> None:
        # Compiled members need no TensorFlow; for one served by TensorFlow the loader sizes
        # its thread pools before the first op (despliegue/tensorflow_runtime.py).
        self.models = ServedModels("antibiotics", prepare=PanelMember.prepare)
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        settle_worker_heap()

    @bentoml.api(**PANEL.batching.api_options())
    def susceptibility(self, rows: list[PanelRow]) -> list[Answered]:
        """Class probabilities per row, in the row's model's class order, with its tag."""
        by_code: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            by_code[row.code].append(index)
        answers: list[Answered] = [Answered("", None)] * len(rows)
        for code, indices in by_code.items():
            features = np.asarray([rows[i].features for i in indices], dtype=np.float32)
            answered = self.models.answer(f"antibiotics.{code}", features, probabilities)
            for i, item in zip(indices, answered, strict=True):
                answers[i] = Answered(item.model_tag, item.answer.tolist())
        return answers

    @bentoml.api
    def describe(self) -> RunnerModels:
        return self.models.describe()
