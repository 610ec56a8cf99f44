"""Import a Keras model from MLflow: a registry URI, a run URI or a local MLflow model folder.

    models:/<name>/<version>   models:/<name>@<alias>   runs:/<run_id>/<path>   ./folder

The MLflow model's Keras flavour (`data/model.keras`) is what enters the store, as a plain
`.keras` file: serving it needs only Keras, not MLflow, and calling the Keras model directly
is ~10-40x faster per call than MLflow's pyfunc wrapper (measured; see README). The MLflow run
id, registered name, version, aliases and stage are kept as labels and metadata, so
`GET /models` tells where each served model came from. The MLmodel file's `metadata`
(classes, features, preprocessing) tells the runner how to serve the model.

MLflow is an optional extra: `pip install -r requirements-mlflow.txt -c constraints.txt`.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from despliegue.importing import ImportRefused, Outcome, import_artifact

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass
class MlflowSource:
    """Where an MLflow model came from, recorded with the stored model."""

    uri: str
    run_id: str = ""
    registered_model: str = ""
    version: str = ""
    aliases: list[str] = field(default_factory=list)
    stage: str = ""

    def provenance(self) -> dict[str, Any]:
        keys = ("uri", "run_id", "registered_model", "version", "aliases", "stage")
        return {f"mlflow_{key}": getattr(self, key) for key in keys if getattr(self, key)}

    def labels(self) -> dict[str, str]:
        labels = {"source": "mlflow"}
        if self.run_id:
            labels["mlflow_run_id"] = self.run_id
        if self.version:
            labels["mlflow_version"] = self.version
        if self.aliases:
            labels["mlflow_alias"] = ",".join(self.aliases)
        if self.stage and self.stage != "None":
            labels["mlflow_stage"] = self.stage
        return labels


def is_mlflow_source(source: str) -> bool:
    return source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").is_file()


def import_mlflow(source: str, model_name: str | None = None) -> Outcome:
    """Fetch (if remote), check the Keras flavour, and import under `model_name`.

    For a registry URI the store name defaults to the registered model name.
    """
    folder = Path(source)
    if folder.is_dir():
        return _import_folder(folder, MlflowSource(uri=str(folder.resolve())), model_name)
    mlflow = _mlflow()
    described = _describe_registry_version(mlflow, source)
    name = model_name or described.registered_model
    if not name:
        raise ImportRefused(f"{source}: give the store name (e.g. modelo_CIP_NM) for a run URI")
    with tempfile.TemporaryDirectory(prefix="despliegue-mlflow-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        except Exception as exc:
            raise ImportRefused(f"{source}: cannot download from {_tracking_uri()}: {exc}") from exc
        return _import_folder(Path(local), described, name)


def _import_folder(folder: Path, source: MlflowSource, model_name: str | None) -> Outcome:
    mlmodel_path = folder / "MLmodel"
    if not mlmodel_path.is_file():
        raise ImportRefused(f"{folder}: not an MLflow model folder (no MLmodel file)")
    mlmodel = yaml.safe_load(mlmodel_path.read_text(encoding="utf-8")) or {}
    flavors = mlmodel.get("flavors") or {}
    keras_flavor = flavors.get("keras")
    if keras_flavor is None:
        raise ImportRefused(
            f"{folder}: no keras flavour in MLmodel (flavours: {sorted(flavors)}); "
            "log the model with mlflow.keras.log_model"
        )
    if keras_flavor.get("save_exported_model"):
        raise ImportRefused(f"{folder}: an exported (SavedModel) Keras flavour cannot be served")
    artifact = folder / keras_flavor.get("data", "data") / "model.keras"
    source.run_id = source.run_id or str(mlmodel.get("run_id") or "")
    name = model_name or source.registered_model
    if not name:
        raise ImportRefused(f"{folder}: give the store name (e.g. modelo_CIP_NM)")
    return import_artifact(
        name,
        artifact,
        declared=mlmodel.get("metadata") or {},
        provenance=source.provenance(),
        labels=source.labels(),
    )


def _describe_registry_version(mlflow: Any, uri: str) -> MlflowSource:
    """Registered name, version, aliases, stage and run of a models:/ URI."""
    found = REGISTRY_URI.match(uri)
    if found is None:
        if uri.startswith("runs:/"):
            return MlflowSource(uri=uri, run_id=uri.removeprefix("runs:/").split("/")[0])
        raise ImportRefused(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    client = mlflow.MlflowClient()
    try:
        if found["version"]:
            version = client.get_model_version(found["name"], found["version"])
        else:
            version = client.get_model_version_by_alias(found["name"], found["alias"])
    except Exception as exc:
        raise ImportRefused(
            f"{uri}: not found in the registry at {_tracking_uri()}: {exc}"
        ) from exc
    return MlflowSource(
        uri=uri,
        run_id=version.run_id or "",
        registered_model=version.name,
        version=str(version.version),
        aliases=sorted(version.aliases or []),
        stage=str(version.current_stage or ""),
    )


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "(MLFLOW_TRACKING_URI not set)")


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise ImportRefused(
            "MLflow is not installed: pip install -r requirements-mlflow.txt -c constraints.txt"
        ) from exc
    return mlflow
