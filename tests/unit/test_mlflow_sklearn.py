"""MLflow's scikit-learn flavour for the scikit-learn families, from model folders (no server):
what is refused and why, and the column name a signature gives a pipeline that needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from benchmarks.servers import config_variant
from despliegue.config import config_path
from despliegue.importing import ImportRefused
from tests.conftest import LIFECYCLE_STATE_ENV, ROOT, lifecycle_state, run_save_models

pytest.importorskip("mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)")
import mlflow.pyfunc
import mlflow.sklearn
from mlflow.models import infer_signature

THICKNESS = pd.DataFrame({"espesor_m": [0.0, 2000.0, 6000.0, 12000.0]})
HEAT_FLOW = [100.0, 65.0, 47.0, 45.0]


class NamedColumn(BaseEstimator, TransformerMixin):
    """A custom first step that selects its column by name and records no feature names."""

    def __init__(self, name: str = "espesor_m") -> None:
        self.name = name

    def fit(self, X: Any, y: Any = None) -> NamedColumn:
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.asarray(X[[self.name]], dtype=float)


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: Any) -> Any:
        return [1.0] * len(model_input)


def import_folder(folder: Path, name: str = "heatflow_svr") -> str:
    from despliegue.mlflow_import import import_mlflow

    with pytest.raises(ImportRefused) as refused:
        import_mlflow(str(folder), name)
    return " ".join(str(refused.value).split())


def test_a_python_function_model_is_refused_naming_the_accepted_flavours(tmp_path: Path) -> None:
    mlflow.pyfunc.save_model(tmp_path / "pyfunc", python_model=Constant())
    said = import_folder(tmp_path / "pyfunc")
    assert "no sklearn flavour in MLmodel (flavours: ['python_function'])" in said
    assert "heatflow_svr takes the flavours: sklearn" in said and "arbitrary code" in said
    said = import_folder(tmp_path / "pyfunc", "modelo_CIP_NM")
    assert "modelo_CIP_NM takes the flavours: keras, tensorflow" in said


@pytest.mark.processes
def test_a_registry_read_with_no_registry_set_is_refused_and_leaves_no_database(
    tmp_path: Path,
) -> None:
    """With no MLFLOW_TRACKING_URI, MLflow would read (and create) ./mlflow.db: an import by
    registry URI and a sync of a family following an alias are refused saying what to set, and
    the folder they ran in stays empty."""
    config = config_variant(
        config_path(),
        tmp_path.parent / f"{tmp_path.name}-configuration.yaml",
        lambda raw: raw["families"]["heatflow"].update(mlflow_alias="champion"),
    )
    home = tmp_path.parent / f"{tmp_path.name}-home" / "bentoml"  # its own store and state
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(COLUMNS="200", DESPLIEGUE_CONFIG=str(config), BENTOML_HOME=str(home))
    env[LIFECYCLE_STATE_ENV] = lifecycle_state(str(home))
    for command in (["import", "heatflow_svr", "models:/heatflow_svr/1"], ["sync"]):
        done = subprocess.run(
            [sys.executable, str(ROOT / "save_models.py"), *command],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        said = " ".join(done.stderr.split())
        assert done.returncode == 1, said
        assert "no MLflow registry to read from: MLFLOW_TRACKING_URI is not set" in said
        assert list(tmp_path.iterdir()) == [], command


def test_a_skops_type_outside_sklearn_numpy_scipy_is_refused_naming_it(tmp_path: Path) -> None:
    model = make_pipeline(NamedColumn(), LinearRegression()).fit(THICKNESS, HEAT_FLOW)
    custom = f"{__name__}.NamedColumn"
    mlflow.sklearn.save_model(
        model, tmp_path / "skops", serialization_format="skops", skops_trusted_types=[custom]
    )
    said = import_folder(tmp_path / "skops")
    assert f"types outside scikit-learn, numpy and scipy, which are never trusted: {custom}" in said


@pytest.mark.parametrize(
    ("name", "frame", "named"),
    [
        ("heatflow_svr", THICKNESS.assign(profundidad_m=1.0), "takes 2 inputs"),
        ("falsetrue_classifier", THICKNESS, "column 'espesor_m' of type double"),
    ],
)
def test_a_signature_the_endpoint_cannot_fill_is_refused(
    tmp_path: Path, name: str, frame: pd.DataFrame, named: str
) -> None:
    model = LinearRegression().fit(frame, HEAT_FLOW)
    signature = infer_signature(frame, model.predict(frame))
    mlflow.sklearn.save_model(model, tmp_path / "m", signature=signature)
    said = import_folder(tmp_path / "m", name)
    assert named in said and f"{name} is sent one column of" in said


@pytest.mark.processes
@pytest.mark.parametrize("serialization", ["cloudpickle", "skops"])
def test_the_signature_names_the_column_a_pipeline_needs(tmp_path: Path, serialization) -> None:
    """A pipeline selecting its column by name records no feature names: the signature's name
    is kept, and the stored model answers as the logged one does. In skops its custom step,
    a type outside scikit-learn, is refused (whatever the file says may be trusted)."""
    model = make_pipeline(NamedColumn(), LinearRegression()).fit(THICKNESS, HEAT_FLOW)
    signature = infer_signature(THICKNESS, model.predict(THICKNESS))
    folder = tmp_path / "mlflow"
    trusted = [f"{__name__}.NamedColumn"] if serialization == "skops" else None
    options = {"skops_trusted_types": trusted} if trusted else {}
    mlflow.sklearn.save_model(
        model, folder, serialization_format=serialization, signature=signature, **options
    )
    home = tmp_path / "bentoml"
    result = run_save_models("import", "heatflow_svr", str(folder), home=str(home))
    if serialization == "skops":
        assert result.returncode == 1 and "NamedColumn" in " ".join(result.stderr.split())
        return
    assert result.returncode == 0, result.stderr
    (card,) = (home / "models" / "heatflow_svr").glob("*/model.yaml")
    metadata = yaml.safe_load(card.read_text())["metadata"]
    assert metadata["input_column"] == "espesor_m"
    assert metadata["mlflow_flavor"] == "sklearn (cloudpickle)"

    from despliegue.artifacts import _load_joblib
    from despliegue.contracts import ModelCard
    from runners.heatflow import heat_flow, with_input

    stored = _load_joblib(card.parent / "model.joblib")
    prepared = with_input(stored, ModelCard.model_construct(metadata=metadata))
    served = heat_flow(prepared, np.asarray(THICKNESS["espesor_m"]))
    np.testing.assert_allclose(served, model.predict(THICKNESS))
    assert json.dumps(served.tolist())
