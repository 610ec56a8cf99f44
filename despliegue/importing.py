"""Bring models into the store: build missing reference models, or import a user's artifact.

Import is probe-then-commit: the artifact is loaded and called on a known input first; only if
that works is it copied (byte for byte) into the store, with its sha256 and provenance. A
format the runner does not load (a SavedModel, an MLflow skops file) is stored converted, and
the conversion is checked against the model as loaded from the user's file.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from despliegue import registry
from despliegue.artifacts import copy_file, save_to_store, sha256_of, stored_models
from despliegue.drift.baselines import import_baseline
from despliegue.families.base import Recipe
from despliegue.preprocessing import summary as preprocessing_summary


class ImportRefused(Exception):
    """The artifact cannot be served; the message names the file and the reason."""


@dataclass(frozen=True)
class Outcome:
    model_name: str
    tag: str
    action: str  # "built", "kept", "imported"
    detail: str
    warnings: tuple[str, ...] = ()


def recipe_for(model_name: str) -> Recipe:
    """The recipe whose model name (or name pattern, e.g. modelo_<CODE>_NM) fits."""
    for recipe in registry.recipes().values():
        if recipe.matches(model_name):
            return recipe
    known = ", ".join(sorted(recipe.model_name for recipe in registry.recipes().values()))
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
        framework=reference.framework or recipe.framework,
        metadata={**reference.metadata, "built_at": _now()},
        write=_writer(reference.framework or recipe.framework, reference.model),
        compiled=_compiler(reference.framework or recipe.framework, reference.model),
    )
    parts = [_metrics_summary(reference.metadata), _runtime_summary(stored)]
    detail = "; ".join(part for part in parts if part)
    return Outcome(name, str(stored.tag), "built", detail)


def import_artifact(
    model_name: str,
    path: Path,
    *,
    declared: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    signature: str | None = None,
    baseline_data: Path | None = None,
    input_column: str | None = None,
    loader: Callable[[Path, Path], LoadedArtifact] | None = None,
) -> Outcome:
    """Probe a user's artifact and, if it answers, store it under `model_name`.

    `declared` is what the import says about serving the model (class labels, preprocessing);
    `provenance` and `labels` record where it came from (e.g. an MLflow run and version);
    `signature` picks a SavedModel's serving signature. `baseline_data` (data like the
    model's training data) makes its drift baseline; without it the first served requests do.
    `input_column` is the name an MLflow signature gives a one-column model's input (kept
    when the model needs it); `loader` (artifact, work folder) loads a format the recipe's
    framework does not read by itself (an MLflow skops file).
    """
    recipe = recipe_for(model_name)
    if declared and recipe.serving_metadata is None:
        raise ImportRefused(
            f"{model_name}: a {recipe.family} model takes no declared {' or '.join(declared)}"
        )
    if not path.exists():
        raise ImportRefused(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise ImportRefused(f"{path}: the file is empty (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="despliegue-import-") as work:
        if loader is not None:
            loaded = loader(path, Path(work))
        else:
            loaded = _load_user_artifact(recipe, path, Path(work), signature)
        try:
            column = _probe(recipe, loaded.model, input_column)
        except Exception as exc:  # any failure of user code is a refusal, reported as such
            raise ImportRefused(f"{path}: probe call failed: {_reason(exc)}") from exc
        if loaded.file != path:
            _same_answers_once_stored(recipe, loaded, column, path)
        serving: dict[str, Any] = {"input_column": column} if column else {}
        if recipe.serving_metadata is not None:
            try:
                serving = recipe.serving_metadata(model_name, loaded.model, declared or {})
            except ValueError as exc:
                raise ImportRefused(f"{path}: {_reason(exc)}") from exc
        if baseline_data is not None:
            try:
                serving["baseline"] = import_baseline(
                    recipe.family, loaded.model, serving, baseline_data
                )
            except (ValueError, OSError) as exc:
                raise ImportRefused(f"--baseline {baseline_data}: {exc}") from exc
        warnings_found = list(loaded.warnings)
        if recipe.review is not None:
            warnings_found += recipe.review(loaded.model, serving)
        # The file imported; for a SavedModel folder, the .keras file converted from it.
        digest = sha256_of(path if path.is_file() else loaded.file)
        stored = save_to_store(
            model_name,
            family=recipe.family,
            framework=recipe.framework,
            metadata={
                "reference": False,
                "source_file": path.name,
                "sha256": digest,
                "imported_at": _now(),
                **loaded.provenance,
                **serving,
                **(provenance or {}),
            },
            write=copy_file(loaded.file),
            labels={"source": "file", **(labels or {})},
            compiled=_compiler(recipe.framework, loaded.model),
        )
    detail = f"sha256 {digest[:12]}…; {_runtime_summary(stored)}"
    summary = preprocessing_summary(serving)
    if summary:
        detail += f"; input: {summary}"
    return Outcome(model_name, str(stored.tag), "imported", detail, tuple(warnings_found))


def _probe(recipe: Recipe, model: Any, column: str | None) -> str | None:
    """Call the model on the probe input; the column name it needs from its signature, if any.

    A model that records its own column names (`feature_names_in_`) is called with them, and a
    signature naming another column is refused; a model that takes plain values is called so
    (a named DataFrame would make it warn on every call); only a model that fails on plain
    values is called, and served, with the signature's column name."""
    if column is None:
        recipe.probe(model)
        return None
    if getattr(model, "feature_names_in_", None) is not None:
        recipe.probe(model, column=column)
        return None
    try:
        recipe.probe(model)
        return None
    except Exception:
        recipe.probe(model, column=column)
        return column


def _same_answers_once_stored(
    recipe: Recipe, loaded: LoadedArtifact, column: str | None, path: Path
) -> None:
    """A model stored in another format than it came in answers the probe input exactly as
    the model loaded from the user's file did."""
    if recipe.probe_input is None or recipe.framework != "sklearn":
        return
    import joblib
    import numpy as np

    stored = joblib.load(loaded.file)
    before = np.asarray(loaded.model.predict(recipe.probe_input(loaded.model, column)))
    after = np.asarray(stored.predict(recipe.probe_input(stored, column)))
    if before.shape != after.shape or not np.array_equal(before, after):
        raise ImportRefused(
            f"{path}: stored as {loaded.file.name}, the model answers the probe input "
            f"differently ({after.tolist()} instead of {before.tolist()})"
        )


@dataclass(frozen=True)
class LoadedArtifact:
    """A user's artifact loaded for probing, and the file the store will keep for it."""

    model: Any
    file: Path
    provenance: dict[str, Any]
    warnings: tuple[str, ...] = ()


def _load_user_artifact(
    recipe: Recipe, path: Path, work: Path, signature: str | None
) -> LoadedArtifact:
    if recipe.framework == "sklearn":
        return _load_sklearn(path)
    if recipe.framework == "keras":
        from despliegue.keras_conversion import ConversionRefused, load_keras_artifact

        try:
            model, file, provenance = load_keras_artifact(path, work, signature)
        except ConversionRefused as exc:
            raise ImportRefused(str(exc)) from exc
        import keras

        provenance = {"keras_version_installed": keras.__version__, **provenance}
        return LoadedArtifact(model, file, provenance)
    raise ImportRefused(f"{path}: importing {recipe.framework} artifacts is not supported yet")


def _load_sklearn(path: Path) -> LoadedArtifact:
    import joblib
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    if not path.is_file():
        raise ImportRefused(f"{path}: a scikit-learn model must be a joblib/pickle file")
    installed = sklearn.__version__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            model = joblib.load(path)
        except Exception as exc:
            raise ImportRefused(_unloadable_pickle(path, installed, exc)) from exc
    pickled_with = installed
    for item in caught:
        if isinstance(item.message, InconsistentVersionWarning):
            pickled_with = item.message.original_sklearn_version
    found: tuple[str, ...] = ()
    if pickled_with != installed:
        found = (
            f"{path.name} was pickled with scikit-learn {pickled_with}, "
            f"but {installed} is installed: predictions may differ or fail",
        )
    provenance = {"sklearn_version_pickled": pickled_with, "sklearn_version_installed": installed}
    return LoadedArtifact(model, path, provenance, found)


def _unloadable_pickle(path: Path, installed: str, exc: Exception) -> str:
    """Why a pickle cannot be loaded, naming the scikit-learn version that wrote it."""
    pickled_with = sklearn_version_in_pickle(path)
    if pickled_with is None or pickled_with == installed:
        return f"{path}: cannot be loaded with joblib/pickle: {_reason(exc)}"
    return (
        f"{path}: pickled with scikit-learn {pickled_with} (recorded in the file), but "
        f"{installed} is installed, and it cannot be loaded here ({_reason(exc)}). A pickle "
        f"does not carry across scikit-learn versions: train the model again with "
        f"scikit-learn {installed} (pip install scikit-learn=={installed} where it is "
        f"trained) and import the new file, or serve it where {pickled_with} is installed"
    )


# After the key, an optional memo opcode, then the version string's opcode: SHORT_BINUNICODE
# (\x8c, 1-byte length), BINUNICODE (X, 4-byte length), SHORT_BINSTRING (U, 1-byte length),
# or protocol 0's UNICODE (V, text up to a newline).
_VERSION_IN_PICKLE = re.compile(
    rb"_sklearn_version\n?(?:\x94|q.|r....|p\d+\n)?"
    rb"(?:\x8c(?P<short>.)|X(?P<long>....)|U(?P<old>.)|V(?P<text>[^\n]{1,32})\n)",
    re.DOTALL,
)
_VERSION = re.compile(r"\d+\.\d+(\.\d+)?([.\w+-]*)")


def sklearn_version_in_pickle(path: Path) -> str | None:
    """The scikit-learn version a pickle records for its estimators, read from the bytes
    without unpickling anything (estimators store it under `_sklearn_version`)."""
    data = _decompressed(path.read_bytes())
    for found in _VERSION_IN_PICKLE.finditer(data):
        if found["text"] is not None:
            raw = found["text"]
        else:
            length_bytes = found["short"] or found["long"] or found["old"]
            length = int.from_bytes(length_bytes, "little")
            raw = data[found.end() : found.end() + min(length, 32)]
        text = raw.decode("utf-8", errors="replace")
        if _VERSION.fullmatch(text):
            return text
    return None


def _decompressed(data: bytes) -> bytes:
    """joblib's compressed files, opened with the matching standard-library codec."""
    import bz2
    import gzip
    import lzma
    import zlib

    codecs = (
        (b"\x1f\x8b", gzip.decompress),
        (b"BZh", bz2.decompress),
        (b"\xfd7zXZ", lzma.decompress),
        (b"\x78", zlib.decompress),
    )
    for magic, decompress in codecs:
        if data.startswith(magic):
            try:
                return decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
                return data
    return data


def _reason(exc: BaseException) -> str:
    """A one-line, never empty, account of an exception (a numpy dtype dump is cut)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0] if len(lines) == 1 else f"{lines[0]} …"
    return first if len(first) <= 300 else f"{first[:300]}…"


def _writer(framework: str, model: Any):
    if framework == "sklearn":
        import joblib

        return lambda target: joblib.dump(model, target)
    return lambda target: model.save(target)


Compiler = Callable[[Path, dict[str, Any]], dict[str, Any]]


def _compiler(framework: str, model: Any) -> Compiler | None:
    """For a Keras model: export it beside its stored file and check the export against it
    (despliegue/compiled_runtime.py); for MTCNN, its three networks beside the weight files
    (despliegue/mtcnn_compiled.py); other frameworks are served as they are."""
    if framework == "mtcnn":
        from despliegue.mtcnn_compiled import compile_beside as compile_mtcnn

        return lambda artifact, metadata: compile_mtcnn(artifact)
    if framework != "keras":
        return None
    from despliegue.compiled_runtime import compile_beside

    return lambda artifact, metadata: compile_beside(model, artifact, metadata)


def _runtime_summary(stored: Any) -> str:
    """Which runtime will serve the stored model, and why (the import summary's words)."""
    from despliegue.artifacts import served_runtime

    if stored.info.metadata.get("framework") not in {"keras", "mtcnn"}:
        return ""
    runtime, reason = served_runtime(stored)
    return f"served by {runtime}" + (f" ({reason})" if reason else "")


def _metrics_summary(metadata: dict[str, Any]) -> str:
    metrics = metadata.get("metrics_held_out", {})
    return ", ".join(f"{k}={v}" for k, v in metrics.items() if k != "split")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
