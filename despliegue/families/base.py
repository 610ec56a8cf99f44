"""The shape every family recipe has (MLServer's "one class per model kind", for the store side)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from despliegue.contracts import Framework


@dataclass(frozen=True)
class ReferenceModel:
    """A freshly trained reference model and the metadata that describes it."""

    model: Any
    metadata: dict[str, Any]
    # Set when a recipe builds references of more than one kind (the face detector: MTCNN or
    # BlazeFace); otherwise the recipe's framework.
    framework: Framework | None = None


@dataclass(frozen=True)
class Recipe:
    family: str
    # The store name; for a family serving an open set of models, a readable pattern.
    model_name: str
    framework: Framework
    description: str
    # Single-model families: build_reference(); pattern families: build_reference(model_name).
    build_reference: Callable[..., ReferenceModel]
    # Calls a loaded artifact on a small known input; raises ValueError saying what is wrong.
    # Families sending one column (scikit-learn) also take `column`: the name the model's MLflow
    # signature gives that column.
    probe: Callable[..., None]
    # Pattern families (one model per code, e.g. modelo_<CODE>_NM): a regex every store name
    # of the family fully matches, and the names the reference set is built for.
    name_pattern: str | None = None
    reference_names: tuple[str, ...] = ()
    # Reference models built only when asked for by name (`save_models.py reference NAME`) or
    # named by configuration: an alternative a user may pick, not part of the default set.
    optional_names: tuple[str, ...] = ()
    # Metadata the runner needs to serve an imported artifact (input length, labels, ...),
    # from the loaded model and what the import declared; raises ValueError if inconsistent.
    serving_metadata: Callable[[str, Any, dict[str, Any]], dict[str, Any]] | None = None
    # Checks that do not refuse an import but belong in its summary (e.g. outputs that hardly
    # change over varied inputs): warnings, from the probed model and its serving metadata.
    review: Callable[[Any, dict[str, Any]], list[str]] | None = None
    # Families sending one column (scikit-learn): the probe's input shaped for a model (and a
    # column name), and the MLflow column types an imported model's signature may give it.
    probe_input: Callable[[Any, str | None], Any] | None = None
    input_types: tuple[str, ...] = ()

    def matches(self, model_name: str) -> bool:
        if self.name_pattern is None:
            return model_name == self.model_name
        # BentoML keeps tag names in lower case; codes are written in upper case.
        return re.fullmatch(self.name_pattern, model_name, re.IGNORECASE) is not None

    def references(self, wanted: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The store names `save_models.py` builds reference models for: the default set, and
        those optional ones that are `wanted` (named on the command line or configured)."""
        optional = tuple(name for name in self.optional_names if name in wanted)
        return (self.reference_names or (self.model_name,)) + optional

    def build_reference_for(self, model_name: str) -> ReferenceModel:
        if self.name_pattern is None:
            return self.build_reference()
        return self.build_reference(model_name)
