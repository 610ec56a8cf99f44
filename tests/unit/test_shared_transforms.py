"""The falsetrue runner's answer rows, made with one pass of a pipeline's transforms: the
same labels and probabilities as the user's pipeline called directly, for pipelines users make
(TF-IDF + logistic regression, a pandas-fitted column, an SVC whose `predict` and likelier
class can differ) and for a bare estimator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC, LinearSVC

from despliegue.contracts import ModelCard
from despliegue.sklearn_input import SharedTransforms
from runners.falsetrue import label_and_probability, with_input

TEXTS = [f"{word} news about {topic} today" for word in ("real", "fake", "odd") for topic in
         ("rain", "taxes", "moon", "sport")]  # fmt: skip
LABELS = [1, 0, 1] * 4


def answered(model, texts) -> np.ndarray:
    card = ModelCard.model_construct(metadata={})
    return label_and_probability(with_input(model, card), texts)


@pytest.mark.filterwarnings("ignore:The `probability` parameter:FutureWarning")
@pytest.mark.parametrize(
    "model",
    [
        make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)), LogisticRegression()
        ),
        make_pipeline(CountVectorizer(), SVC(probability=True, random_state=0)),
    ],
    ids=["tfidf-logistic", "counts-svc"],
)
def test_rows_equal_the_pipeline_called_directly(model) -> None:
    model.fit(TEXTS, LABELS)
    texts = [*TEXTS, "a text the model never saw"]
    rows = answered(model, texts)
    assert rows[:, 0].tolist() == model.predict(texts).astype(float).tolist()
    assert rows[:, 1] == pytest.approx(model.predict_proba(texts)[:, 1], abs=0)


def test_a_pandas_fitted_pipeline_gets_its_column() -> None:
    frame = pd.DataFrame({"headline": TEXTS})
    model = make_pipeline(
        make_column_transformer((TfidfVectorizer(), "headline")), LogisticRegression()
    ).fit(frame, LABELS)
    rows = answered(model, TEXTS)
    assert rows[:, 0].tolist() == model.predict(frame).astype(float).tolist()
    assert rows[:, 1] == pytest.approx(model.predict_proba(frame)[:, 1], abs=0)


def test_the_transforms_run_once_per_call() -> None:
    calls = []

    def vectorize(texts):
        calls.append(len(texts))
        return np.array([[len(text), text.count("e")] for text in texts], dtype=float)

    model = make_pipeline(FunctionTransformer(vectorize), LogisticRegression())
    model.fit(TEXTS, LABELS)
    calls.clear()
    answered(model, TEXTS[:3])
    assert calls == [3]


def test_a_classifier_without_probabilities_answers_its_labels_and_nan() -> None:
    model = make_pipeline(TfidfVectorizer(), LinearSVC()).fit(TEXTS, LABELS)
    rows = answered(model, TEXTS)
    assert rows[:, 0].tolist() == model.predict(TEXTS).astype(float).tolist()
    assert np.isnan(rows[:, 1]).all()


def test_a_model_that_is_not_a_pipeline_is_its_own_final_estimator() -> None:
    model = LinearSVC()
    shared = SharedTransforms(model)
    assert shared.estimator is model and shared.features("unchanged") == "unchanged"
