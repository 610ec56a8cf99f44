"""Falsetrue (seed 004): a text classifier answering 0 (False) or 1 (Real) for each text.

The reference model is a TF-IDF + logistic regression pipeline trained on
`data/falsetrue_corpus.csv`: 160 short headlines (Spanish and English) written for this
project, half in a sober factual style (1) and half in a hoax/clickbait style (0). It shows
the serving path works end to end; it knows nothing about real news. Import your own
pipeline (anything with `predict(list[str])`) to serve a real one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from despliegue.drift.baselines import build_baseline, text_summary
from despliegue.families.base import Recipe, ReferenceModel
from despliegue.sklearn_input import OneColumnInput, text_column

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "falsetrue_corpus.csv"
SEED = 2026


def load_corpus(path: Path = CORPUS_PATH) -> tuple[list[str], np.ndarray]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], np.array([int(row["label"]) for row in rows])


def build_reference() -> ReferenceModel:
    from sklearn.base import clone
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import cross_val_predict, train_test_split
    from sklearn.pipeline import make_pipeline

    texts, labels = load_corpus()
    x_train, x_test, y_train, y_test = train_test_split(
        texts, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    unseen = cross_val_predict(clone(model), x_train, y_train, cv=5, method="predict_proba")
    lengths = np.array([len(text) for text in x_train])
    metadata = {
        "reference": True,
        "task": "binary text classification",
        "classes": {"0": "False", "1": "Real"},
        "training_data": (
            f"{len(texts)} headlines written for the project (despliegue/families/data/"
            "falsetrue_corpus.csv), balanced, Spanish and English"
        ),
        "feature_ranges": {"text_chars": [int(lengths.min()), int(lengths.max())]},
        "metrics_held_out": {
            "split": "25% held out, stratified",
            "accuracy": round(float(accuracy_score(y_test, predicted)), 4),
            "f1_real": round(float(f1_score(y_test, predicted)), 4),
        },
        # Answers on texts the model has not seen (5-fold), as a served model answers: on
        # its own training texts it is surer than it will ever be on new ones.
        "baseline": build_baseline(
            text_summary(x_train),
            {
                "class": [str(int(p >= 0.5)) for p in unseen[:, 1]],
                "probability_real": unseen[:, 1].tolist(),
            },
            source="reference",
        ),
    }
    return ReferenceModel(model=model, metadata=metadata)


PROBE_TEXTS = ["El banco central publicó su informe anual.", "¡Cura!"]


def probe_input(model: Any, column: str | None = None) -> Any:
    """The probe's texts, shaped as the model takes them."""
    return OneColumnInput(model, text_column, column)(PROBE_TEXTS)


def probe(model: Any, column: str | None = None) -> None:
    if not hasattr(model, "predict"):
        raise ValueError(f"a {type(model).__name__} has no predict() method")
    output = np.asarray(model.predict(probe_input(model, column)))
    if output.shape != (2,):
        raise ValueError(f"predict() on 2 texts returned shape {output.shape}")
    if not set(output.tolist()) <= {0, 1}:
        raise ValueError(f"predict() must answer 0 or 1, got {sorted(set(output.tolist()))}")


RECIPE = Recipe(
    family="falsetrue",
    model_name="falsetrue_classifier",
    framework="sklearn",
    description="text pipeline: texts -> 0 (False) / 1 (Real)",
    build_reference=build_reference,
    probe=probe,
    probe_input=probe_input,
    input_types=("string",),
)
