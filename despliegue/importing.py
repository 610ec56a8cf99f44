"""Bring models into the store: build missing reference models, or import a user's artifact.

Import is probe-then-commit: the artifact is loaded and called on a known input first; only if
that works is it copied (byte for byte) into the store, with its sha256 and provenance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from despliegue.artifacts import copy_file, save_to_store, sha256_of, stored_models
from despliegue.families import RECIPES, Recipe


class ImportRefused(Exception):
    """The artifact cannot be served; the message names the file and the reason."""


@dataclass(frozen=True)
class Outcome:
    model_name: str
    tag: str
    action: str  # "built", "kept", "imported"
    detail: str
    warning: str = ""


def recipe_for(model_name: str) -> Recipe:
    """The recipe whose model name (or name pattern, e.g. modelo_<CODE>_NM) fits."""
    for recipe in RECIPES.values():
        if recipe.matches(model_name):
            return recipe
    known = ", ".join(sorted(recipe.model_name for recipe in RECIPES.values()))
    raise ImportRefused(f"unknown model name {model_name!r}; known: {known}")


def ensure_reference(recipe: Recipe, model_name: str | None = None) -> Outcome:
    """Build and store one reference model unless some version of its name is already stored."""
    name = model_name or recipe.model_name
    existing = stored_models(name)
    if existing:
        kind = "reference" if existing[0].info.metadata.get("reference") else "imported"
        return Outcome(name, str(existing[0].tag), "kept", f"{kind}, already stored")
    reference = recipe.build_reference_for(name)
    stored = save_to_store(
        name,
        family=recipe.family,
        framework=recipe.framework,
        metadata={**reference.metadata, "built_at": _now()},
        write=_writer(recipe, reference.model),
    )
    return Outcome(name, str(stored.tag), "built", _metrics_summary(reference.metadata))


def import_artifact(
    model_name: str,
    path: Path,
    *,
    declared: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    baseline_data: Path | None = None,
) -> Outcome:
    """Probe a user's artifact and, if it answers, store it under `model_name`.

    `declared` is what the import says about serving the model (class labels, preprocessing);
    `provenance` and `labels` record where it came from (e.g. an MLflow run and version).
    `baseline_data` (data like the model's training data) makes its drift baseline; without
    it the first served requests do.
    """
    recipe = recipe_for(model_name)
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    model, loaded_with, warning = _load_user_artifact(recipe, path)
    try:
        recipe.probe(model)
    except Exception as exc:  # any failure of user code is a refusal, reported as such
        raise ImportRefused(f"{path}: probe call failed: {exc}") from exc
    serving: dict[str, Any] = {}
    if recipe.serving_metadata is not None:
        try:
            serving = recipe.serving_metadata(model_name, model, declared or {})
        except ValueError as exc:
            raise ImportRefused(f"{path}: {exc}") from exc
    if baseline_data is not None:
        from despliegue.drift import import_baseline

        try:
            serving["baseline"] = import_baseline(recipe.family, model, serving, baseline_data)
        except (ValueError, OSError) as exc:
            raise ImportRefused(f"--baseline {baseline_data}: {exc}") from exc
    digest = sha256_of(path)
    write = copy_file(path)
    if recipe.framework == "keras" and path.suffix.lower() != ".keras":
        write = _writer(recipe, model)  # the store keeps one format: .keras
    stored = save_to_store(
        model_name,
        family=recipe.family,
        framework=recipe.framework,
        metadata={
            "reference": False,
            "source_file": path.name,
            "sha256": digest,
            "imported_at": _now(),
            **loaded_with,
            **serving,
            **(provenance or {}),
        },
        write=write,
        labels={"source": "file", **(labels or {})},
    )
    return Outcome(model_name, str(stored.tag), "imported", f"sha256 {digest[:12]}…", warning)


def _load_user_artifact(recipe: Recipe, path: Path) -> tuple[Any, dict[str, Any], str]:
    if recipe.framework == "sklearn":
        return _load_sklearn(path)
    if recipe.framework == "keras":
        return _load_keras(path)
    raise ImportRefused(f"{path}: importing {recipe.framework} artifacts is not supported yet")


def _load_keras(path: Path) -> tuple[Any, dict[str, Any], str]:
    """Load a .keras or .h5 file (a SavedModel folder is converted to .keras by the caller)."""
    if path.suffix.lower() not in {".keras", ".h5", ".hdf5"}:
        raise ImportRefused(f"{path}: a Keras model must be a .keras or .h5 file")
    from despliegue.tensorflow_runtime import configure_tensorflow

    configure_tensorflow()
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ImportRefused(
            f"{path}: cannot be loaded by Keras {keras.__version__}: {exc}"
        ) from exc
    return model, {"keras_version_installed": keras.__version__, "source_format": path.suffix}, ""


def _load_sklearn(path: Path) -> tuple[Any, dict[str, Any], str]:
    import joblib
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    installed = sklearn.__version__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            model = joblib.load(path)
        except Exception as exc:
            raise ImportRefused(f"{path}: cannot be loaded with joblib/pickle: {exc}") from exc
    pickled_with = installed
    for item in caught:
        if isinstance(item.message, InconsistentVersionWarning):
            pickled_with = item.message.original_sklearn_version
    warning = ""
    if pickled_with != installed:
        warning = (
            f"{path.name} was pickled with scikit-learn {pickled_with}, "
            f"but {installed} is installed: predictions may differ or fail"
        )
    provenance = {"sklearn_version_pickled": pickled_with, "sklearn_version_installed": installed}
    return model, provenance, warning


def _writer(recipe: Recipe, model: Any):
    if recipe.framework == "sklearn":
        import joblib

        return lambda target: joblib.dump(model, target)
    return lambda target: model.save(target)


def _metrics_summary(metadata: dict[str, Any]) -> str:
    metrics = metadata.get("metrics_held_out", {})
    return ", ".join(f"{k}={v}" for k, v in metrics.items() if k != "split")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
