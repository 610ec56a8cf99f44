"""Import a model from MLflow: any model URI MLflow resolves, or a folder.

    models:/<name>/<version>   models:/<name>@<alias>   models:/<name>/<stage>
    models:/<name>/latest      models:/<model_id>       runs:/<run_id>/<path>   ./folder

A registry URI is resolved to one registered version first (as MLflow resolves it: a stage or
`latest` means the newest version in that stage, or of all), and that version is what gets
downloaded and recorded, so an alias moving meanwhile cannot mix two versions.

Flavours, by the family the store name belongs to (a `python_function`-only model is arbitrary
code, and is refused naming these):

- scikit-learn families (`heatflow_svr`, `falsetrue_classifier`): `sklearn`
  (`mlflow.sklearn.log_model`) in the `pickle`, `cloudpickle` or `skops` serialisation. A
  pickle is kept byte for byte and loaded as joblib imports are (same version check). A skops
  file is loaded trusting only the types it declares, and only if each is of scikit-learn,
  numpy or scipy (a type of any other module is refused, named); it is stored as joblib, and
  must answer the probe input exactly as the skops file did. The signature, when there is one,
  must take the one column the endpoint sends, of the family's type; its column name is kept
  for a pipeline that needs a named DataFrame column without recording it.
- Keras families: `keras` (`mlflow.keras.log_model`), and `tensorflow`
  (`mlflow.tensorflow.log_model`) holding a Keras model (`model_type: keras`: data/model.keras,
  .h5 or a SavedModel folder) or a TensorFlow module (`model_type: tf2-module`, a SavedModel).
  Whatever the flavour, a plain `.keras` file enters the store (SavedModels are converted and
  checked; see despliegue/keras_conversion.py): serving needs only Keras, not MLflow, and
  calling the Keras model directly is ~10-40x faster per call than MLflow's pyfunc wrapper
  (measured; see docs/models.md).

The run id, registered name, version, stage and aliases are kept as labels and metadata, so
`GET /models` tells where each served model came from. The MLmodel file's `metadata` (classes,
features, preprocessing) tells a Keras family's runner how to serve the model.

MLflow is an optional extra: `pip install -r requirements-mlflow.txt -c constraints.txt`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from despliegue.importing import (
    ImportRefused,
    LoadedArtifact,
    Outcome,
    import_artifact,
    recipe_for,
)

if TYPE_CHECKING:
    from despliegue.families.base import Recipe

# The forms of a models:/ URI, as MLflow parses them (mlflow.store.artifact.utils.models).
MODELS_URI = re.compile(
    r"^models:/(?:(?P<name>[^/@]+)(?:/(?P<suffix>[^/@]+)|@(?P<alias>[^/@]+))|(?P<model_id>[^/@]+))$"
)
LATEST = "latest"
# The flavours a family's store name takes, by the framework of its recipe.
ACCEPTED_FLAVOURS = {"sklearn": ("sklearn",), "keras": ("keras", "tensorflow")}
SKLEARN_FORMATS = ("pickle", "cloudpickle", "skops")
# The only modules whose types a skops file may ask to be trusted with.
SKOPS_TRUSTED_MODULES = frozenset({"sklearn", "numpy", "scipy"})


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
    require_registry(source)
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
    name = model_name or source.registered_model
    if not name:
        raise ImportRefused(f"{folder}: give the store name (e.g. modelo_CIP_NM)")
    recipe = recipe_for(name)
    source.run_id = source.run_id or str(mlmodel.get("run_id") or "")
    source.model_id = source.model_id or str(mlmodel.get("model_id") or "")
    if recipe.framework == "sklearn":
        return _import_sklearn(folder, mlmodel, source, name, recipe, declared)
    artifact, source.flavor, flavour_signature = flavour_artifact(folder, mlmodel, name)
    return import_artifact(
        name,
        artifact,
        declared={**(mlmodel.get("metadata") or {}), **declared},
        provenance=source.provenance(),
        labels=source.labels(),
        signature=signature or flavour_signature,
    )


def flavour_artifact(
    folder: Path, mlmodel: dict[str, Any], model_name: str = "a Keras family's model"
) -> tuple[Path, str, str | None]:
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
        f"{_accepted(model_name, 'keras', flavors)}"
    )


def _accepted(model_name: str, framework: str, flavors: dict[str, Any]) -> str:
    """The flavours a store name takes, said when a model has none of them."""
    pyfunc = " (a python_function model is arbitrary code, not served)" if flavors else ""
    return f"; {model_name} takes the flavours: {', '.join(ACCEPTED_FLAVOURS[framework])}{pyfunc}"


def _import_sklearn(
    folder: Path,
    mlmodel: dict[str, Any],
    source: MlflowSource,
    name: str,
    recipe: Recipe,
    declared: dict[str, Any],
) -> Outcome:
    """An `sklearn` flavour model of a scikit-learn family (module docstring)."""
    flavors = mlmodel.get("flavors") or {}
    conf = flavors.get("sklearn")
    if conf is None:
        raise ImportRefused(
            f"{folder}: no sklearn flavour in MLmodel (flavours: {sorted(flavors)}); log the "
            f"model with mlflow.sklearn.log_model{_accepted(name, 'sklearn', flavors)}"
        )
    serialization = str(conf.get("serialization_format") or "cloudpickle")
    if serialization not in SKLEARN_FORMATS:
        raise ImportRefused(
            f"{folder}: sklearn serialization_format {serialization!r}; accepted: "
            f"{', '.join(SKLEARN_FORMATS)}"
        )
    artifact = _existing(folder / str(conf.get("pickled_model") or "model.pkl"), folder)
    column = signature_column(mlmodel.get("signature"), recipe, folder)
    source.flavor = f"sklearn ({serialization})"
    loader = (
        _skops_loader(str(conf.get("sklearn_version") or "")) if serialization == "skops" else None
    )
    return import_artifact(
        name,
        artifact,
        declared=declared,
        provenance=source.provenance(),
        labels=source.labels(),
        input_column=column,
        loader=loader,
    )


def signature_column(signature: Any, recipe: Recipe, folder: Path) -> str | None:
    """The column name a model's MLflow signature gives its input, once the signature is found
    to take what the family's endpoint sends: one column of one of `recipe.input_types`."""
    if not signature or not signature.get("inputs"):
        return None
    inputs = signature["inputs"]
    specs = json.loads(inputs) if isinstance(inputs, str) else inputs
    sent = f"{recipe.model_name} is sent one column of {' or '.join(recipe.input_types)} values"
    if len(specs) != 1:
        names = ", ".join(str(spec.get("name", spec.get("type"))) for spec in specs)
        raise ImportRefused(
            f"{folder}: the MLflow signature takes {len(specs)} inputs ({names}); {sent}"
        )
    (spec,) = specs
    if spec.get("type") == "tensor":
        tensor = spec.get("tensor-spec") or {}
        dtype, shape = str(tensor.get("dtype")), list(tensor.get("shape") or [-1])
        numeric = "double" in recipe.input_types
        fits = dtype.startswith(("float", "int")) if numeric else dtype in {"str", "object"}
        if not fits or shape not in ([-1], [-1, 1]):
            raise ImportRefused(
                f"{folder}: the MLflow signature takes a {dtype} tensor of shape {shape}; {sent}"
            )
        return spec.get("name")
    if spec.get("type") not in recipe.input_types:
        raise ImportRefused(
            f"{folder}: the MLflow signature takes column {spec.get('name')!r} of type "
            f"{spec.get('type')}; {sent}"
        )
    return spec.get("name")


def _skops_loader(sklearn_version: str) -> Any:
    """Load a skops file trusting only the types it declares, each of scikit-learn, numpy or
    scipy; the model is stored as joblib (the format the runner loads)."""

    def load(path: Path, work: Path) -> LoadedArtifact:
        import joblib
        import sklearn
        import skops.io

        declared = skops.io.get_untrusted_types(file=path)
        outside = [name for name in declared if name.split(".")[0] not in SKOPS_TRUSTED_MODULES]
        if outside:
            raise ImportRefused(
                f"{path}: the skops file holds types outside scikit-learn, numpy and scipy, "
                f"which are never trusted: {', '.join(outside)}"
            )
        try:
            model = skops.io.load(path, trusted=declared)
        except Exception as exc:
            raise ImportRefused(f"{path}: cannot be loaded with skops: {exc}") from exc
        stored = work / "model.joblib"
        joblib.dump(model, stored)
        installed = sklearn.__version__
        saved_with = sklearn_version or installed
        found: tuple[str, ...] = ()
        if saved_with != installed:
            found = (
                f"{path.name} was saved with scikit-learn {saved_with}, but {installed} is "
                "installed: predictions may differ or fail",
            )
        provenance = {
            "sklearn_version_pickled": saved_with,
            "sklearn_version_installed": installed,
            "skops_trusted_types": declared,
        }
        return LoadedArtifact(model, stored, provenance, found)

    return load


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


def require_registry(what: str) -> None:
    """Refuse when no tracking URI is set and MLflow's local default (./mlflow.db, or ./mlruns/
    from older versions) is absent: MLflow would create an empty mlflow.db in the current
    folder, answer "not found", and leave the file behind."""
    if os.environ.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_REGISTRY_URI"):
        return
    if Path("mlflow.db").exists() or Path("mlruns").is_dir():
        return
    raise ImportRefused(
        f"{what}: no MLflow registry to read from: MLFLOW_TRACKING_URI is not set and "
        f"{Path.cwd()} holds neither mlflow.db nor mlruns/ (MLflow's local default); set "
        "MLFLOW_TRACKING_URI to the tracking server, e.g. http://mlflow.internal:5000"
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
