"""MLflow's scikit-learn flavour for the scikit-learn families, against the session's live
MLflow tracking server: for `heatflow_svr` and `falsetrue_classifier`, a model logged with
`mlflow.sklearn.log_model` in the pickle and the skops serialisations (each with the signature
MLflow infers from a DataFrame) is imported by alias and by stage, promoted, and served,
answering as the logged model does; `save_models.py sync` follows an alias move."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, lifecycle_state, run_save_models, serve, stop_server
from tests.integration.conftest import Registry

pytestmark = pytest.mark.integration
pytest.importorskip("mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)")
import mlflow  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

THICKNESS_M = [250.0, 1500.0, 6000.0]
TEXTS = [
    "El instituto de estadística situó el paro en el 11,2 % en el tercer trimestre.",
    "¡Un limón al día cura todas las enfermedades y los médicos lo ocultan!",
    "El parlamento aprobó los presupuestos con 180 votos a favor.",
    "¡Los médicos odian este truco para adelgazar sin moverse del sofá!",
]


def heatflow_model(offset: float) -> tuple[Any, pd.DataFrame]:
    """A DataFrame-fitted pipeline (column `espesor_m`) answering 45 + 55 e^(-h/2000) + offset."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    frame = pd.DataFrame({"espesor_m": np.linspace(0.0, 12000.0, 60)})
    heat = 45.0 + 55.0 * np.exp(-frame["espesor_m"] / 2000.0) + offset
    return make_pipeline(SplineTransformer(), LinearRegression()).fit(frame, heat), frame


def falsetrue_model(offset: float) -> tuple[Any, pd.DataFrame]:
    """A text pipeline fitted on a DataFrame column `texto` (offset: which label is "real")."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    frame = pd.DataFrame({"texto": TEXTS * 5})
    labels = np.array([1, 0, 1, 0] * 5)
    labels = labels if offset == 0 else 1 - labels
    vectorizer = ColumnTransformer([("tfidf", TfidfVectorizer(), "texto")])
    return make_pipeline(vectorizer, LogisticRegression()).fit(frame, labels), frame


FAMILIES = {
    "heatflow_svr": ("heatflow", heatflow_model),
    "falsetrue_classifier": ("falsetrue", falsetrue_model),
}


def log_version(name: str, serialization: str, offset: float, alias: str) -> tuple[str, Any]:
    """Log and register one version of `name`, point `alias` at it; (version, the model)."""
    model, frame = FAMILIES[name][1](offset)
    signature = infer_signature(frame, model.predict(frame))
    options = {}
    if serialization == "skops":
        # What a user marks trusted for MLflow to save it (the spline holds scipy types).
        import skops.io

        options["skops_trusted_types"] = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    with mlflow.start_run(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            serialization_format=serialization,
            signature=signature,
            **options,
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version, model


def stored_cards(home: str, name: str) -> dict[str, dict]:
    """Tag -> model.yaml of every stored version of `name`."""
    return {
        f"{name}:{path.parent.name}": yaml.safe_load(path.read_text())
        for path in (Path(home) / "models" / name).glob("*/model.yaml")
    }


def import_new(home: str, name: str, uri: str) -> tuple[str, dict]:
    before = set(stored_cards(home, name))
    result = run_save_models("import", name, uri, home=home)
    assert result.returncode == 0, f"{uri}: {result.stderr}"
    assert "is a candidate" in " ".join(result.stdout.split()) or "now serves" in result.stdout
    ((tag, card),) = [(t, c) for t, c in stored_cards(home, name).items() if t not in before]
    return tag, card


def expected_answers(name: str, model: Any) -> list[float]:
    if name == "heatflow_svr":
        return model.predict(pd.DataFrame({"espesor_m": THICKNESS_M})).tolist()
    return model.predict(pd.DataFrame({"texto": TEXTS})).tolist()


def served_answers(server: Any, name: str) -> tuple[list[float], str]:
    if name == "heatflow_svr":
        answer = server.post("/heatflow", {"sediment_thickness_m": THICKNESS_M})
        assert answer.status_code == 200, answer.text
        return answer.json()["heat_flow_mw_m2"], answer.json()["model"]
    answer = server.post("/falsetrue", {"texts": TEXTS})
    assert answer.status_code == 200, answer.text
    return answer.json()["is_falsetrue"], answer.json()["model"]


def test_sklearn_models_import_by_alias_and_stage_and_serve_after_promote(
    registry: Registry, tmp_path: Path
) -> None:
    client = mlflow.MlflowClient()
    home = registry.home
    promoted: dict[str, tuple[str, Any]] = {}
    for name, (family, _) in FAMILIES.items():
        for offset, serialization in enumerate(["pickle", "skops"]):
            version, model = log_version(name, serialization, float(offset), "champion")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # stages are deprecated, still resolved
                client.transition_model_version_stage(name, version, "Staging")
            for uri in (f"models:/{name}@champion", f"models:/{name}/Staging"):
                tag, card = import_new(home, name, uri)
                labels, metadata = card["labels"], card["metadata"]
                assert labels["source"] == "mlflow" and labels["mlflow_version"] == version, uri
                assert metadata["mlflow_flavor"] == f"sklearn ({serialization})", uri
                assert metadata["sklearn_version_pickled"] == metadata["sklearn_version_installed"]
                if serialization == "skops":
                    assert all(
                        t.split(".")[0] in {"sklearn", "numpy", "scipy"}
                        for t in metadata["skops_trusted_types"]
                    ), metadata["skops_trusted_types"]
            why = ("--why", f"the {serialization} model from MLflow")
            done = run_save_models("promote", family, tag, *why, home=home)
            assert done.returncode == 0, done.stderr
            promoted[name] = (tag, model)
    # Both families now serve their last (skops) import; a server started on the store answers
    # as the logged models do.
    server = serve(home, tmp_path / "serve.log")
    try:
        for name, (tag, model) in promoted.items():
            answers, model_tag = served_answers(server, name)
            assert model_tag == tag
            # The service rounds heat flow to 3 decimals.
            np.testing.assert_allclose(answers, expected_answers(name, model), atol=0.5e-3 + 1e-9)
    finally:
        stop_server(server.process)


def following_config(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    for family in ("heatflow", "falsetrue"):
        raw["families"][family]["mlflow_alias"] = "production"
    path = folder / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sync_follows_an_alias_move_for_the_sklearn_families(
    registry: Registry, tmp_path: Path
) -> None:
    home = str(tmp_path / "bentoml")
    env = {"DESPLIEGUE_CONFIG": str(following_config(tmp_path))}

    def sync() -> str:
        result = run_save_models("sync", home=home, extra_env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return " ".join(result.stdout.split())

    def served(family: str) -> str:
        return json.loads(Path(lifecycle_state(home)).read_text())["families"][family]["served"]

    first = {name: log_version(name, "skops", 0.0, "production")[0] for name in FAMILIES}
    assert sync().count("promoted") == 2
    before = {family: served(family) for family, _ in FAMILIES.values()}
    second = {name: log_version(name, "pickle", 1.0, "production")[0] for name in FAMILIES}
    assert sync().count("promoted") == 2
    for name, (family, _) in FAMILIES.items():
        now = served(family)
        assert now != before[family]
        card = stored_cards(home, name)[now]
        assert card["labels"]["mlflow_version"] == second[name] != first[name]
        assert card["metadata"]["mlflow_flavor"] == "sklearn (pickle)"
    assert "already served" in sync()
