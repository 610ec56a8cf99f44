"""Import a Keras or TensorFlow model from MLflow: any model URI MLflow resolves, or a folder.

    models:/<name>/<version>   models:/<name>@<alias>   models:/<name>/<stage>
    models:/<name>/latest      models:/<model_id>       runs:/<run_id>/<path>   ./folder

A registry URI is resolved to one registered version first (as MLflow resolves it: a stage or
`latest` means the newest version in that stage, or of all), and that version is what gets
downloaded and recorded, so an alias moving meanwhile cannot mix two versions.

Flavours: `keras` (`mlflow.keras.log_model`), and `tensorflow` (`mlflow.tensorflow.log_model`)
holding a Keras model (`model_type: keras`: data/model.keras, .h5 or a SavedModel folder) or a
TensorFlow module (`model_type: tf2-module`, a SavedModel). Whatever the flavour, a plain
`.keras` file enters the store (SavedModels are converted and checked; see
despliegue/keras_conversion.py): serving needs only Keras, not MLflow, and calling the Keras
model directly is ~10-40x faster per call than MLflow's pyfunc wrapper (measured; see
docs/models.md). The run id, registered name, version, stage and aliases are kept as labels
and metadata, so `GET /models` tells where each served model came from. The MLmodel file's
`metadata` (classes, features, preprocessing) tells the runner how to serve the model.

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

# The forms of a models:/ URI, as MLflow parses them (mlflow.store.artifact.utils.models).
MODELS_URI = re.compile(
    r"^models:/(?:(?P<name>[^/@]+)(?:/(?P<suffix>[^/@]+)|@(?P<alias>[^/@]+))|(?P<model_id>[^/@]+))$"
)
LATEST = "latest"


@dataclass
class MlflowSource:
    """Where an MLflow model came from, recorded with the stored model."""

    uri: str
    run_id: str = ""
    registered_model: str = ""
    version: str = ""
    aliases: list[str] = field(default_factory=list)
    stage: str = ""
    model_id: str = ""
    flavor: str = ""

    @property
    def download_uri(self) -> str:
        """The resolved version for registry URIs; the URI itself otherwise."""
        if self.registered_model and self.version:
            return f"models:/{self.registered_model}/{self.version}"
        return self.uri

    def provenance(self) -> dict[str, Any]:
        keys = ("uri", "run_id", "registered_model", "version", "aliases", "stage", "model_id")
        found = {f"mlflow_{key}": getattr(self, key) for key in keys if getattr(self, key)}
        return {**found, "mlflow_flavor": self.flavor} if self.flavor else found

    def labels(self) -> dict[str, str]:
        labels = {"source": "mlflow"}
        if self.run_id:
            labels["mlflow_run_id"] = self.run_id
        if self.registered_model:
            labels["mlflow_name"] = self.registered_model
        if self.version:
            labels["mlflow_version"] = self.version
        if self.aliases:
            labels["mlflow_alias"] = ",".join(self.aliases)
        if self.stage and self.stage != "None":
            labels["mlflow_stage"] = self.stage
        if self.model_id:
            labels["mlflow_model_id"] = self.model_id
        return labels


def is_mlflow_source(source: str) -> bool:
    return source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").is_file()


def import_mlflow(
    source: str,
    model_name: str | None = None,
    *,
    declared: dict[str, Any] | None = None,
    signature: str | None = None,
) -> Outcome:
    """Resolve and fetch (if remote), pick the flavour's artifact, import it under `model_name`.

    For a registry URI the store name defaults to the registered model name. `declared`
    (from the command line) overrides the MLmodel metadata.
    """
    folder = Path(source)
    if folder.is_dir():
        found = MlflowSource(uri=str(folder.resolve()))
        return _import_folder(folder, found, model_name, declared or {}, signature)
    mlflow = _mlflow()
    described = describe(mlflow.MlflowClient(), source)
    name = model_name or described.registered_model
    if not name:
        raise ImportRefused(f"{source}: give the store name (e.g. modelo_CIP_NM) for this URI")
    with tempfile.TemporaryDirectory(prefix="despliegue-mlflow-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=described.download_uri, dst_path=tmp
            )
        except Exception as exc:
            raise ImportRefused(f"{source}: cannot download from {_tracking_uri()}: {exc}") from exc
        return _import_folder(Path(local), described, name, declared or {}, signature)


def _import_folder(
    folder: Path,
    source: MlflowSource,
    model_name: str | None,
    declared: dict[str, Any],
    signature: str | None,
) -> Outcome:
    mlmodel_path = folder / "MLmodel"
    if not mlmodel_path.is_file():
        raise ImportRefused(f"{folder}: not an MLflow model folder (no MLmodel file)")
    mlmodel = yaml.safe_load(mlmodel_path.read_text(encoding="utf-8")) or {}
    artifact, source.flavor, flavour_signature = flavour_artifact(folder, mlmodel)
    source.run_id = source.run_id or str(mlmodel.get("run_id") or "")
    source.model_id = source.model_id or str(mlmodel.get("model_id") or "")
    name = model_name or source.registered_model
    if not name:
        raise ImportRefused(f"{folder}: give the store name (e.g. modelo_CIP_NM)")
    return import_artifact(
        name,
        artifact,
        declared={**(mlmodel.get("metadata") or {}), **declared},
        provenance=source.provenance(),
        labels=source.labels(),
        signature=signature or flavour_signature,
    )


def flavour_artifact(folder: Path, mlmodel: dict[str, Any]) -> tuple[Path, str, str | None]:
    """(the Keras file or SavedModel folder inside an MLflow model, the flavour, signature)."""
    flavors = mlmodel.get("flavors") or {}
    if "keras" in flavors:
        conf = flavors["keras"]
        data = folder / conf.get("data", "data")
        if conf.get("save_exported_model"):
            return _existing(data / "model", folder), "keras (exported SavedModel)", None
        return _existing(data / "model.keras", folder), "keras", None
    if "tensorflow" in flavors:
        conf = flavors["tensorflow"]
        model_type = conf.get("model_type", "tf1-estimator")
        if model_type == "keras":
            data = folder / conf.get("data", "data")
            # MLflow writes model.h5 for save_format h5, model.keras with TensorFlow >= 2.16,
            # and a SavedModel folder `model` before that.
            candidates = [data / "model.h5"] if conf.get("save_format") == "h5" else []
            candidates += [data / "model.keras", data / "model"]
            found = next((path for path in candidates if path.exists()), candidates[0])
            return _existing(found, folder), "tensorflow (keras)", None
        if "saved_model_dir" in conf:
            saved_model = _existing(folder / conf["saved_model_dir"], folder)
            return saved_model, f"tensorflow ({model_type})", conf.get("signature_def_key")
        raise ImportRefused(f"{folder}: tensorflow flavour of unknown model_type {model_type!r}")
    raise ImportRefused(
        f"{folder}: no keras or tensorflow flavour in MLmodel (flavours: {sorted(flavors)}); "
        "log the model with mlflow.keras.log_model or mlflow.tensorflow.log_model"
    )


def _existing(path: Path, folder: Path) -> Path:
    if not path.exists():
        raise ImportRefused(f"{folder}: the MLmodel file names {path.relative_to(folder)}, absent")
    return path


def describe(client: Any, uri: str) -> MlflowSource:
    """Registered name, version, aliases, stage and run of a models:/ or runs:/ URI."""
    if uri.startswith("runs:/"):
        return MlflowSource(uri=uri, run_id=uri.removeprefix("runs:/").split("/")[0])
    found = MODELS_URI.match(uri)
    if found is None:
        raise ImportRefused(
            f"{uri}: expected models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/STAGE, "
            "models:/NAME/latest, models:/MODEL_ID or runs:/RUN_ID/PATH"
        )
    try:
        if found["model_id"]:
            logged = client.get_logged_model(found["model_id"])
            return MlflowSource(
                uri=uri, run_id=logged.source_run_id or "", model_id=logged.model_id
            )
        version = _registered_version(client, found["name"], found["suffix"], found["alias"])
    except ImportRefused:
        raise
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


def _registered_version(client: Any, name: str, suffix: str | None, alias: str | None) -> Any:
    """The registered version a URI names: a number, an alias, `latest` or a stage."""
    if alias:
        return client.get_model_version_by_alias(name, alias)
    assert suffix is not None
    if suffix.isdigit():
        return client.get_model_version(name, suffix)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise ImportRefused(f"models:/{name}/{suffix}: no registered model {name!r}")
    if suffix.lower() != LATEST:
        # Stages are deprecated since MLflow 2.9 but still resolved; they compare as MLflow
        # compares them, ignoring case (production == Production).
        in_stage = [v for v in versions if str(v.current_stage).lower() == suffix.lower()]
        if not in_stage:
            stages = sorted({str(v.current_stage) for v in versions})
            raise ImportRefused(
                f"models:/{name}/{suffix}: no version of {name} is in stage {suffix!r} "
                f"(stages of its versions: {', '.join(stages)})"
            )
        versions = in_stage
    newest = max(versions, key=lambda version: int(version.version))
    # A search result may leave out aliases: read the version itself.
    return client.get_model_version(name, str(newest.version))


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
