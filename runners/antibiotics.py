"""Antibiotic panel runner (seed 003): every stored `modelo_<CODE>_NM` configuration selects.

The set of models is read from the model store when this module is imported (see
`panel_models`), and each one becomes a class attribute of type BentoModel, which is how
BentoML finds the models a service needs: `bentoml build` packs exactly the served panel,
and a sixth antibiotic is an import plus a restart. Input length, class labels and
preprocessing come from each model's metadata.

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

from despliegue.artifacts import ModelCard, load_served_model, panel_models
from despliegue.config import settings
from despliegue.contracts import PanelRow
from despliegue.heap import freeze_startup_heap
from despliegue.startup import serve_until_callers_stop

PANEL = settings().panel("antibiotics")
MODELS = panel_models(PANEL)


@dataclass(frozen=True)
class PanelMember:
    """One antibiotic's loaded model and how to feed it (from its metadata)."""

    code: str
    model: Any
    card: ModelCard
    input_length: int
    classes: list[str]
    mean: np.ndarray | None
    std: np.ndarray | None

    @classmethod
    def load(cls, code: str, ref: bentoml.models.BentoModel) -> PanelMember:
        model, card = load_served_model(ref)
        meta = card.metadata
        preprocessing = meta.get("preprocessing") or {"kind": "none"}
        standardize = preprocessing.get("kind") == "standardize"
        return cls(
            code=code,
            model=model,
            card=card,
            input_length=int(meta["input_length"]),
            classes=[str(c) for c in meta["classes"]],
            mean=np.asarray(preprocessing["mean"], np.float32) if standardize else None,
            std=np.asarray(preprocessing["std"], np.float32) if standardize else None,
        )

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        if self.mean is not None and self.std is not None:
            features = (features - self.mean) / self.std
        return np.asarray(self.model(features, training=False), dtype=float)


class AntibioticPanel:
    def __init__(self) -> None:
        from despliegue.tensorflow_runtime import configure_tensorflow

        # Thread pools first, as every TensorFlow runner does (and TensorFlow's start-up banner
        # silenced); Keras is imported by the loader, here in the runner process only.
        configure_tensorflow()
        self.members = {code: PanelMember.load(code, ref) for code, ref in MODELS.items()}
        self.cards = [member.card for member in self.members.values()]
        serve_until_callers_stop()  # on SIGTERM, the API drains first
        freeze_startup_heap()

    @bentoml.api(**PANEL.batching.api_options())
    def susceptibility(self, rows: list[PanelRow]) -> list[list[float]]:
        """Class probabilities per row, in the row's model's class order."""
        by_code: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            by_code[row.code].append(index)
        answers: list[list[float]] = [[] for _ in rows]
        for code, indices in by_code.items():
            member = self.members[code]
            features = np.asarray([rows[i].features for i in indices], dtype=np.float32)
            for i, probabilities in zip(indices, member.probabilities(features), strict=True):
                answers[i] = probabilities.tolist()
        return answers

    @bentoml.api
    def describe(self) -> list[ModelCard]:
        return self.cards


for _code, _ref in MODELS.items():
    setattr(AntibioticPanel, f"model_{_code}", _ref)
AntibioticPanel = bentoml.service(**settings().service_options("AntibioticPanel"))(AntibioticPanel)
