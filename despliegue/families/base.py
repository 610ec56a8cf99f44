"""The shape every family recipe has (MLServer's "one class per model kind", for the store side)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from despliegue.artifacts import Framework


@dataclass(frozen=True)
class ReferenceModel:
    """A freshly trained reference model and the metadata that describes it."""

    model: Any
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Recipe:
    family: str
    model_name: str
    framework: Framework
    description: str
    build_reference: Callable[[], ReferenceModel]
    # Calls a loaded artifact on a small known input; raises ValueError saying what is wrong.
    probe: Callable[[Any], None]
    # Metadata an imported artifact of this family needs to be served (e.g. preprocessing).
    import_metadata: Callable[[Any], dict[str, Any]] | None = None
