"""Model artifacts in the BentoML model store: one format, every family.

A stored model is a folder holding one artifact file plus metadata (Triton's "configuration
plus an artifact"): `framework` says how to load it, `family` which runner serves it. Writing
goes through `bentoml.models.create`, which builds the model in a temporary folder and only
moves it into the store when the block ends without an exception, so a failed import leaves
the store unchanged.

The sha256 of the artifact as written is recorded in the metadata (`artifact_sha256`), and
every load checks it (a face detector also checks its manifest's sum for each weight file):
a damaged or altered file stops start-up naming it, rather than answering wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import bentoml

from despliegue.bentoml_compat import bentoml_home, model_store_folder
from despliegue.config import PanelConfig
from despliegue.contracts import Framework, ModelCard
from despliegue.preprocessing import summary as preprocessing_summary

# The file `framework` loads from; a face detector is a manifest next to its weight files.
ARTIFACT_FILE: dict[str, str] = {
    "sklearn": "model.joblib",
    "keras": "model.keras",
    "mtcnn": "mtcnn.json",
    "blazeface": "blazeface.json",
}
# Frameworks whose artifact is a manifest listing weight files, each with its sha256.
MANIFEST_FRAMEWORKS = frozenset({"mtcnn", "blazeface"})


def model_card(stored: bentoml.Model) -> ModelCard:
    """The card of a stored model, from its metadata (what a runner's `describe` lists), with
    the runtime `load_artifact` serves it with and why."""
    meta = dict(stored.info.metadata)
    runtime, reason = served_runtime(stored)
    return ModelCard(
        tag=str(stored.tag),
        family=str(meta.get("family", "unknown")),
        framework=str(meta.get("framework", "unknown")),
        reference=bool(meta.get("reference", False)),
        created=stored.info.creation_time,
        labels=dict(stored.info.labels),
        preprocessing=preprocessing_summary(meta),
        metadata=meta,
        runtime=runtime,
        runtime_reason=reason,
    )


def served_runtime(stored: bentoml.Model) -> tuple[str, str | None]:
    """(runtime, why) for a stored model: a Keras model's verified export, or MTCNN's three
    (ONNX Runtime), when configuration allows it and the files are the ones checked, else
    TensorFlow and the reason; other frameworks run on their own library."""
    meta = stored.info.metadata
    framework = str(meta.get("framework", "unknown"))
    if framework not in {"keras", "mtcnn"}:
        return {"sklearn": "scikit-learn"}.get(framework, framework), None
    from despliegue.config import settings

    enabled = settings().tensorflow.compiled
    if framework == "mtcnn":
        from despliegue.mtcnn_compiled import serving_runtime as mtcnn_runtime

        return mtcnn_runtime(dict(meta), Path(stored.path), enabled)
    from despliegue.compiled_runtime import serving_runtime

    return serving_runtime(dict(meta), Path(stored.path), enabled)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelMissing(RuntimeError):
    """A model named in configuration.yaml is not in the store; says how to put it there."""


class ModelUnusable(RuntimeError):
    """A stored model cannot be served as it is (unreadable, damaged, no recorded sha256);
    the message names the file and the fix."""


def artifact_path(stored: bentoml.Model) -> Path:
    framework = stored.info.metadata.get("framework")
    if framework not in ARTIFACT_FILE:
        raise ModelUnusable(
            f"{stored.path}: unknown framework {framework!r} in the metadata of {stored.tag}. "
            "Fix: import the model again with `python save_models.py import`."
        )
    return Path(stored.path_of(ARTIFACT_FILE[framework]))


def verify_artifact(stored: bentoml.Model) -> Path:
    """The artifact's path, once every file it loads from is readable and has the sha256
    recorded when it entered the store; otherwise ModelUnusable naming the file."""
    path = artifact_path(stored)
    expected = {path: stored.info.metadata.get("artifact_sha256")}
    if stored.info.metadata.get("framework") in MANIFEST_FRAMEWORKS:
        manifest = json.loads(_read_text(path, stored))
        for entry in manifest["weights"].values():
            expected[path.parent / entry["file"]] = entry["sha256"]
    for file, recorded in expected.items():
        if recorded is None:
            raise ModelUnusable(
                f"{file}: no sha256 was recorded for {stored.tag} when it was stored (a store "
                f"made before models were verified at load), so it cannot be verified. Fix: "
                f"{_restore_fix(stored)}"
            )
        actual = _sha256_readable(file, stored)
        if actual != recorded:
            raise ModelUnusable(
                f"{file}: sha256 {actual[:16]}… differs from {recorded[:16]}… recorded when "
                f"{stored.tag} was stored: the file is damaged or was altered. Fix: "
                f"{_restore_fix(stored)}"
            )
    return path


def _restore_fix(stored: bentoml.Model) -> str:
    if stored.info.metadata.get("reference"):
        return (
            f"rebuild it: `bentoml models delete {stored.tag} -y && python save_models.py "
            f"reference {stored.tag.name}`, or restore a backup (`python save_models.py restore "
            "DIR`)."
        )
    return (
        f"import the original artifact again (`python save_models.py import {stored.tag.name} "
        "FILE`) or restore a backup (`python save_models.py restore DIR`), then serve that "
        "version."
    )


def _sha256_readable(file: Path, stored: bentoml.Model) -> str:
    try:
        return sha256_of(file)
    except OSError as exc:
        raise ModelUnusable(
            f"{file}: cannot be read ({exc.strerror or exc}), so {stored.tag} cannot be loaded. "
            "Fix: give the user running the service read access to the model store "
            f"({bentoml_home()}), or {_restore_fix(stored)}"
        ) from None


def _read_text(file: Path, stored: bentoml.Model) -> str:
    _sha256_readable(file, stored)  # a readable file, or the message saying it is not
    return file.read_text(encoding="utf-8")


def load_artifact(stored: bentoml.Model) -> Any:
    """Verify, then load the artifact of a stored model with the loader its `framework` names."""
    path = verify_artifact(stored)
    framework = stored.info.metadata["framework"]
    try:
        if framework in {"keras", "mtcnn"} and served_runtime(stored)[0] == "onnxruntime":
            return _load_compiled(stored)
        return LOADERS[framework](path)
    except Exception as exc:  # a verified file the installed library cannot load
        raise ModelUnusable(
            f"{path}: the {framework} loader cannot load {stored.tag} "
            f"({type(exc).__name__}: {exc}). Fix: import the model again with this "
            "environment's libraries (`python save_models.py import`, which probes it first), "
            "or install the versions its metadata records."
        ) from None


def stored_model(tag: str) -> bentoml.Model:
    """The stored model of a tag, or ModelMissing / ModelUnusable saying what to do."""
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise ModelMissing(
            f"model {tag} is not in the BentoML model store ({bentoml_home()}). "
            f"Run `python save_models.py` to build the reference models, or "
            f"`python save_models.py import {tag.split(':')[0]} FILE` to import your own."
        ) from None
    except Exception as exc:  # anything else: the store's folder for it cannot be read
        raise ModelUnusable(
            f"model {tag}: its folder in the BentoML model store ({bentoml_home()}/models) "
            f"cannot be read ({exc}). Fix: give the user running the service read access to "
            "the store, or restore the model from a backup (`python save_models.py restore DIR`)."
        ) from None


def require_models_in_store(tags: Iterable[str]) -> None:
    """Pre-flight for `bentoml serve`: stop with the import command if a model is missing,
    and naming the file if one is unreadable or damaged (every served model is verified).

    BentoML would also stop on a missing model, but with a message about a cloud context that
    tells an operator nothing about how to put the model there.
    """
    missing, present = [], []
    for tag in tags:
        try:
            present.append(stored_model(tag))
        except ModelMissing:
            missing.append(tag)
    if missing:
        names = ", ".join(missing)
        raise ModelMissing(
            f"model(s) {names} not in the BentoML model store ({bentoml_home()}). "
            f"Run `python save_models.py` to build the reference models, or "
            f"`python save_models.py import {missing[0].split(':')[0]} FILE` to import your own."
        )
    for stored in present:
        verify_artifact(stored)


def _load_joblib(path: Path) -> Any:
    import joblib

    return joblib.load(path)


def _load_compiled(stored: bentoml.Model) -> Any:
    """A Keras model's checked export in ONNX Runtime, or MTCNN on its three checked exports
    (served_runtime has checked their sums): neither TensorFlow, Keras nor mtcnn is imported."""
    from despliegue.compiled_runtime import OnnxModel, onnx_threads

    compiled = stored.info.metadata["compiled"]
    if stored.info.metadata["framework"] == "mtcnn":
        from despliegue.mtcnn_compiled import load_compiled

        return load_compiled(Path(stored.path), compiled, onnx_threads())
    return OnnxModel(Path(stored.path_of(compiled["file"])), onnx_threads())


def _load_keras(path: Path) -> Any:
    from despliegue.tensorflow_runtime import configure_tensorflow

    configure_tensorflow()  # thread pools before Keras runs TensorFlow's first op
    import keras

    import despliegue.keras_conversion  # noqa: F401  (registers EmbeddedSavedModel for SavedModels)

    return keras.models.load_model(path, compile=False)


def _load_mtcnn(path: Path) -> Any:
    """An MTCNN detector built from the weight files stored beside its manifest (not from the
    copy inside the installed package); load_artifact has checked each file's sha256."""
    from mtcnn import MTCNN
    from mtcnn.stages import StageONet, StagePNet, StageRNet

    manifest = json.loads(path.read_text(encoding="utf-8"))
    weights = {
        stage: str(path.parent / entry["file"]) for stage, entry in manifest["weights"].items()
    }
    return MTCNN(
        stages=[
            StagePNet(weights=weights["pnet"]),
            StageRNet(weights=weights["rnet"]),
            StageONet(weights=weights["onet"]),
        ]
    )


def _load_blazeface(path: Path) -> Any:
    """BlazeFace (despliegue/blazeface.py) from the stored .tflite its manifest names;
    load_artifact has checked each file's sha256."""
    from despliegue.blazeface import load_blazeface
    from despliegue.tensorflow_runtime import configure_tensorflow

    configure_tensorflow()  # its interpreter comes with TensorFlow: thread pools sized first

    return load_blazeface(path)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "sklearn": _load_joblib,
    "keras": _load_keras,
    "mtcnn": _load_mtcnn,
    "blazeface": _load_blazeface,
}


def save_to_store(
    name: str,
    *,
    family: str,
    framework: Framework,
    metadata: dict[str, Any],
    write: Callable[[Path], None],
    labels: dict[str, str] | None = None,
    compiled: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> bentoml.Model:
    """Create a stored model whose artifact `write` produces at the path it is given.

    `compiled(artifact, metadata)` writes a compiled form beside the artifact and answers the
    card's `compiled` entry (despliegue/compiled_runtime.py). Either the whole model lands in
    the store or, if `write` raises, nothing does.
    """
    full_metadata = {"family": family, "framework": framework, **metadata}
    all_labels = {"family": family, "reference": str(metadata.get("reference", False)).lower()}
    all_labels.update(labels or {})
    with bentoml.models.create(name, labels=all_labels, metadata=full_metadata) as model:
        artifact = Path(model.path_of(ARTIFACT_FILE[framework]))
        write(artifact)
        # The sum of the file as stored (an .h5 import is stored as .keras): what loads check.
        model.info.metadata["artifact_sha256"] = sha256_of(artifact)
        if compiled is not None:
            model.info.metadata["compiled"] = compiled(artifact, full_metadata)
    return bentoml.models.get(model.tag)


def copy_file(source: Path) -> Callable[[Path], None]:
    """A `write` for save_to_store that keeps the user's file byte for byte."""

    def write(target: Path) -> None:
        shutil.copyfile(source, target)

    return write


def stored_models(name: str) -> list[bentoml.Model]:
    """Every version of one model name in the local store, newest first.

    BentoML keeps tag names in lower case, so `modelo_AMK_NM` finds `modelo_amk_nm`. Only
    this name's folders are read: an unreadable folder of another model does not get in the way.
    """
    try:
        found = bentoml.models.list(name.lower())
    except bentoml.exceptions.NotFound:
        return []
    return sorted(found, key=lambda m: m.info.creation_time, reverse=True)


def stored_model_names() -> set[str]:
    """The model names in the local store, from its folder names, without reading any model's
    metadata (one unreadable folder would hide every other model)."""
    root = model_store_folder()  # the Bento's own store inside an image, not the home's
    return {folder.name for folder in root.iterdir() if folder.is_dir()} if root.is_dir() else set()


def panel_models(panel: PanelConfig) -> dict[str, bentoml.models.BentoModel]:
    """The models a panel serves, by code, each resolved to a concrete stored tag.

    Read from the store when the runner module is imported (at `bentoml build` and at start-up),
    so a new `modelo_<CODE>_NM` is picked up by a restart or a rebuild, with no code change.
    Codes named in configuration but missing from the store keep a tag that fails start-up
    with instructions (see require_models_in_store), and so do members whose folder cannot be read:
    this runs when the service is imported, where an exception would be a traceback, so the
    preflight reports them instead.
    """
    in_store = {code for name in stored_model_names() if (code := panel.code_of(name))}
    codes = sorted(panel.codes or in_store | set(panel.versions))
    refs: dict[str, bentoml.models.BentoModel] = {}
    for code in codes:
        name = panel.model_name(code)
        version = panel.versions.get(code)
        if version is None:
            try:
                newest = stored_models(name)
            except Exception:  # an unreadable folder: the preflight names it
                newest = []
            version = newest[0].tag.version if newest else "latest"
        refs[code] = bentoml.models.BentoModel(f"{name}:{version}")
    return refs
