"""The input a fitted scikit-learn model is called with: the shape it was fitted on.

The heat-flow and falsetrue families send one column of values (thicknesses, texts). A model
fitted on a pandas DataFrame remembers its column names (`feature_names_in_`) and warns
("X does not have valid feature names") on every call with a plain array, which floods the log
under load; so it gets a DataFrame with that column name, exactly as it was fitted. A pipeline
that needs a named column without recording it (a custom first step) gets the name its MLflow
signature gives (`input_column` in its metadata). A model fitted on plain arrays or lists gets
those. The import probe calls models the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class OneColumnInput:
    """Builds a model's input from one column of values, decided once per model."""

    def __init__(
        self, model: Any, plain: Callable[[Sequence[Any]], Any], column: str | None = None
    ) -> None:
        names = getattr(model, "feature_names_in_", None)
        if names is not None and len(names) != 1:
            shown = ", ".join(str(name) for name in list(names)[:5])
            raise ValueError(
                f"the model was fitted on {len(names)} named columns ({shown}"
                f"{', …' if len(names) > 5 else ''}); this endpoint sends one column"
            )
        if names is not None and column is not None and str(names[0]) != column:
            raise ValueError(
                f"the model was fitted on column {names[0]!r}, but its signature names {column!r}"
            )
        self.column = column if names is None else str(names[0])
        self._plain = plain

    def __call__(self, values: Sequence[Any]) -> Any:
        if self.column is None:
            return self._plain(values)
        import pandas as pd

        return pd.DataFrame({self.column: values})


def numeric_column(values: Sequence[Any]) -> np.ndarray:
    """Plain input of a model fitted on one numeric feature: an (n, 1) array."""
    return np.asarray(values, dtype=float).reshape(-1, 1)


def text_column(values: Sequence[Any]) -> list[str]:
    """Plain input of a text pipeline (a vectorizer first): a list of strings."""
    return list(values)


class SharedTransforms:
    """A fitted model split into its transforms and its final estimator, so that two methods
    of the estimator (`predict` and `predict_proba`) share one pass of the transforms: a text
    pipeline's vectorizer is most of its cost (the falsetrue reference: 1.6 -> 1.0 ms for one
    text, 4.7 -> 2.6 ms for 32). The same calls a Pipeline makes, so the same answers; a model
    that is not a Pipeline is its own final estimator."""

    def __init__(self, model: Any) -> None:
        from sklearn.pipeline import Pipeline

        if isinstance(model, Pipeline) and len(model.steps) > 1:
            self.transforms: Callable[[Any], Any] | None = model[:-1].transform
            self.estimator = model[-1]
        else:
            self.transforms, self.estimator = None, model

    def features(self, inputs: Any) -> Any:
        """What the final estimator sees for `inputs`."""
        return inputs if self.transforms is None else self.transforms(inputs)
