"""Model artifacts in the BentoML model store: one format, every family.

A stored model is a folder holding one artifact file plus metadata (Triton's "configuration
plus an artifact"): `framework` says how to load it, `family` which runner serves it. Writing
goes through `bentoml.models.create`, which builds the model in a temporary folder and only
moves it into the store when the block ends without an exception, so a failed import leaves
the store unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import bentoml
from pydantic import BaseModel, Field

from despliegue.config import PanelConfig

Framework = Literal["sklearn", "keras", "mtcnn", "blazeface"]
# The file `framework` loads from; a face detector is a manifest next to its weight files.
ARTIFACT_FILE: dict[str, str] = {
    "sklearn": "model.joblib",
    "keras": "model.keras",
    "mtcnn": "mtcnn.json",
    "blazeface": "blazeface.json",
}


class ModelCard(BaseModel):
    """What `GET /models` tells about a served model."""

    tag: str = Field(examples=["heatflow_svr:3kd7x2qf4ylbqaav"])
    family: str = Field(examples=["heatflow"])
    framework: str = Field(examples=["sklearn"])
    reference: bool = Field(description="True for a reference model built by save_models.py")
    created: datetime
    labels: dict[str, str] = Field(
        default_factory=dict, description="Where the model came from (file, MLflow run/version)"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, stored: bentoml.Model) -> ModelCard:
        meta = dict(stored.info.metadata)
        return cls(
            tag=str(stored.tag),
            family=str(meta.get("family", "unknown")),
            framework=str(meta.get("framework", "unknown")),
            reference=bool(meta.get("reference", False)),
            created=stored.info.creation_time,
            labels=dict(stored.info.labels),
            metadata=meta,
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_artifact(stored: bentoml.Model) -> Any:
    """Load the artifact of a stored model with the loader its `framework` names."""
    framework = stored.info.metadata.get("framework")
    if framework not in ARTIFACT_FILE:
        raise ValueError(f"{stored.tag}: unknown framework {framework!r} in metadata")
    path = Path(stored.path_of(ARTIFACT_FILE[framework]))
    return LOADERS[framework](path)


class ModelMissing(RuntimeError):
    """A model named in configuration.yaml is not in the store; says how to put it there."""


def load_served_model(ref: bentoml.models.BentoModel) -> tuple[Any, ModelCard]:
    """Load the model a runner serves, failing start-up with instructions if it is missing."""
    stored = ref.stored
    if stored is None:
        raise ModelMissing(
            f"model {ref.tag} is not in the BentoML model store ({bentoml_home()}). "
            f"Run `python save_models.py` to build the reference models, or "
            f"`python save_models.py import {ref.tag.name} FILE` to import your own."
        )
    return load_artifact(stored), ModelCard.of(stored)


def served_tags() -> dict[str, str]:
    """Every model tag configuration selects, by the family key (or panel member) serving it."""
    from despliegue.config import PanelConfig, settings

    tags: dict[str, str] = {}
    for name, family in settings().families.items():
        if isinstance(family, PanelConfig):
            tags.update(
                {f"{name}.{code}": str(ref.tag) for code, ref in panel_models(family).items()}
            )
        else:
            tags[name] = family.tag
    return tags


def require_models_in_store(tags: Iterable[str]) -> None:
    """Pre-flight for `bentoml serve`: stop with the import command if a model is missing.

    BentoML would also stop, but with a message about a cloud context that tells an operator
    nothing about how to put the model there.
    """
    missing = []
    for tag in tags:
        try:
            bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            missing.append(tag)
    if missing:
        names = ", ".join(missing)
        raise ModelMissing(
            f"model(s) {names} not in the BentoML model store ({bentoml_home()}). "
            f"Run `python save_models.py` to build the reference models, or "
            f"`python save_models.py import {missing[0].split(':')[0]} FILE` to import your own."
        )


def bentoml_home() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def _load_joblib(path: Path) -> Any:
    import joblib

    return joblib.load(path)


def _load_keras(path: Path) -> Any:
    import keras

    return keras.models.load_model(path, compile=False)


def _load_mtcnn(path: Path) -> Any:
    """An MTCNN detector built from the weight files stored beside its manifest (not from the
    copy inside the installed package), after checking each file's sha256."""
    import json

    from mtcnn import MTCNN
    from mtcnn.stages import StageONet, StagePNet, StageRNet

    manifest = json.loads(path.read_text(encoding="utf-8"))
    weights = {}
    for stage, entry in manifest["weights"].items():
        file = path.parent / entry["file"]
        check_weights(file, entry["sha256"])
        weights[stage] = str(file)
    return MTCNN(
        stages=[
            StagePNet(weights=weights["pnet"]),
            StageRNet(weights=weights["rnet"]),
            StageONet(weights=weights["onet"]),
        ]
    )


def check_weights(file: Path, sha256: str) -> None:
    """A stored weight file must be the one its manifest recorded."""
    if sha256_of(file) != sha256:
        raise ValueError(f"{file}: sha256 differs from the manifest; the stored model is damaged")


def _load_blazeface(path: Path) -> Any:
    """BlazeFace (despliegue/blazeface.py) from the stored .tflite its manifest names."""
    from despliegue.blazeface import load_blazeface

    return load_blazeface(path, check_weights)


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
) -> bentoml.Model:
    """Create a stored model whose artifact `write` produces at the path it is given.

    Either the whole model lands in the store or, if `write` raises, nothing does.
    """
    full_metadata = {"family": family, "framework": framework, **metadata}
    all_labels = {"family": family, "reference": str(metadata.get("reference", False)).lower()}
    all_labels.update(labels or {})
    with bentoml.models.create(name, labels=all_labels, metadata=full_metadata) as model:
        write(Path(model.path_of(ARTIFACT_FILE[framework])))
    return bentoml.models.get(model.tag)


def copy_file(source: Path) -> Callable[[Path], None]:
    """A `write` for save_to_store that keeps the user's file byte for byte."""

    def write(target: Path) -> None:
        shutil.copyfile(source, target)

    return write


def stored_models(name: str) -> list[bentoml.Model]:
    """Every version of one model name in the local store, newest first.

    BentoML keeps tag names in lower case, so `modelo_AMK_NM` finds `modelo_amk_nm`.
    """
    found = [m for m in bentoml.models.list() if m.tag.name == name.lower()]
    return sorted(found, key=lambda m: m.info.creation_time, reverse=True)


def panel_models(panel: PanelConfig) -> dict[str, bentoml.models.BentoModel]:
    """The models a panel serves, by code, each resolved to a concrete stored tag.

    Read from the store when the runner module is imported (at `bentoml build` and at start-up),
    so a new `modelo_<CODE>_NM` is picked up by a restart or a rebuild, with no code change.
    Codes named in configuration but missing from the store keep a tag that fails start-up
    with instructions (see load_served_model).
    """
    in_store = {code for model in bentoml.models.list() if (code := panel.code_of(model.tag.name))}
    codes = sorted(panel.codes or in_store | set(panel.versions))
    refs: dict[str, bentoml.models.BentoModel] = {}
    for code in codes:
        name = panel.model_name(code)
        version = panel.versions.get(code)
        if version is None:
            newest = stored_models(name)
            version = newest[0].tag.version if newest else "latest"
        refs[code] = bentoml.models.BentoModel(f"{name}:{version}")
    return refs
