"""Heat flow (seed 000): an epsilon-SVR predicting surface heat flow from sediment thickness.

The reference model is trained on data generated from a sediment-blanketing relation: thick,
fast-deposited sediment depresses the heat flow measured at the sea floor, which decays from
the basement value towards a floor as the sediment column grows,

    q(h) = 45 + 55 * exp(-h / 2000 m)   [mW/m²],   plus Gaussian noise (sigma = 6 mW/m²),

for thickness h in [0, 12000] m. It is an illustration of the shape of the effect, not a
geophysical model: import a model trained on measured data to serve real predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from despliegue.drift.baselines import Summary, build_baseline
from despliegue.families.base import Recipe, ReferenceModel
from despliegue.sklearn_input import OneColumnInput, numeric_column

MAX_TRAINING_THICKNESS_M = 12_000.0
SEED = 2026
PROBE_THICKNESSES_M = [0.0, 1000.0, 5000.0]


def reference_heat_flow(thickness_m: np.ndarray) -> np.ndarray:
    return 45.0 + 55.0 * np.exp(-thickness_m / 2000.0)


def build_reference() -> ReferenceModel:
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    rng = np.random.default_rng(SEED)
    thickness = rng.uniform(0.0, MAX_TRAINING_THICKNESS_M, size=1200)
    heat_flow = reference_heat_flow(thickness) + rng.normal(0.0, 6.0, size=thickness.size)
    x_train, x_test, y_train, y_test = train_test_split(
        thickness.reshape(-1, 1), heat_flow, test_size=0.25, random_state=SEED
    )
    model = make_pipeline(StandardScaler(), SVR(kernel="rbf", C=100.0, epsilon=2.0))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metadata = {
        "reference": True,
        "task": "regression",
        "input": {"name": "sediment_thickness_m", "unit": "m"},
        "output": {"name": "heat_flow_mw_m2", "unit": "mW/m²"},
        "training_data": (
            "1200 synthetic samples: q = 45 + 55*exp(-h/2000 m) + N(0, 6) mW/m², "
            f"h uniform in [0, {MAX_TRAINING_THICKNESS_M:.0f}] m, numpy seed {SEED}"
        ),
        "feature_ranges": {"sediment_thickness_m": [0.0, MAX_TRAINING_THICKNESS_M]},
        "metrics_held_out": {
            "split": "25% held out",
            "mae_mw_m2": round(float(mean_absolute_error(y_test, predicted)), 3),
            "r2": round(float(r2_score(y_test, predicted)), 4),
        },
        "baseline": build_baseline(
            Summary(numeric={"sediment_thickness_m": x_train[:, 0].tolist()}),
            {"heat_flow_mw_m2": model.predict(x_train).tolist()},
            source="reference",
        ),
    }
    return ReferenceModel(model=model, metadata=metadata)


def probe_input(model: Any, column: str | None = None) -> Any:
    """The probe's thicknesses, shaped as the model takes them."""
    return OneColumnInput(model, numeric_column, column)(PROBE_THICKNESSES_M)


def probe(model: Any, column: str | None = None) -> None:
    if not hasattr(model, "predict"):
        raise ValueError(f"a {type(model).__name__} has no predict() method")
    output = np.asarray(model.predict(probe_input(model, column)), dtype=float)
    if output.shape not in {(3,), (3, 1)}:
        raise ValueError(f"predict() on 3 thickness values returned shape {output.shape}")
    if not np.all(np.isfinite(output)):
        raise ValueError("predict() returned non-finite heat flow values")


RECIPE = Recipe(
    family="heatflow",
    model_name="heatflow_svr",
    framework="sklearn",
    description="SVR: sediment thickness (m) -> surface heat flow (mW/m²)",
    build_reference=build_reference,
    probe=probe,
    probe_input=probe_input,
    input_types=("double", "float", "long", "integer"),
)
