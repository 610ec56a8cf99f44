"""Which model key a V2 model name (a store name: `heatflow_svr`, `modelo_AMK_NM`) is, from the
registry and configuration: no list of names of its own."""

from __future__ import annotations

import functools
from typing import Any

from despliegue import registry
from despliegue.config import settings

V2_PREFIX = "/v2/"
# The Swagger UI's group of the V2 routes, and what it says of them.
V2_TAG = "Open Inference Protocol (V2)"
V2_TAG_DESCRIPTION = (
    "KServe V2 / Triton REST: every served model by its store name (`heatflow_svr`, "
    "`falsetrue_classifier`, `flower_classifier`, `face_detector`, `face_validator`, "
    "`modelo_<CODE>_NM`); tensors in JSON or in the binary-data extension. Each answer equals "
    "the answer of the seed endpoint for the same items."
)
V2_MODEL_PATHS = "/v2/models/"
V2_OPEN = frozenset({"/v2/health/live", "/v2/health/ready"})


def model_key(name: str) -> str | None:
    """The registry's model key serving `name` (`antibiotics` for every panel model), or None
    (also for a model whose registry entry names no V2 signature)."""
    for model in registry.models():
        if not model.inference:
            continue
        if model.panel:
            if settings().panel(model.key).code_of(name) is not None:
                return model.key
        elif settings().family(model.key).model.lower() == name.lower():
            return model.key
    return None


@functools.cache
def signature(key: str) -> Any:
    """The V2 signature the registry names for a model key."""
    return registry.model(key).part("inference")


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith(V2_PREFIX)


def v2_scope(path: str) -> str | None:
    """The token scope a /v2 path needs (None: open): a model's is the scope of the seed
    endpoint it answers like (`/v2/models/heatflow_svr/infer` -> `heatflow`). Server metadata,
    and unknown models (a 404), need any valid token; health is open, like the probes."""
    if path in V2_OPEN:
        return None
    parts = path[len(V2_PREFIX) :].split("/")
    if len(parts) >= 2 and parts[0] == "models":
        key = model_key(parts[1])
        return signature(key).seed_path if key is not None else "any"
    return "any"


def infer_admission(path: str) -> str | None:
    """A V2 infer path's admission class (its model's family's), or None when the path is not
    the infer path of a served model."""
    if not path.startswith(V2_MODEL_PATHS):
        return None
    parts = path[len(V2_MODEL_PATHS) :].split("/")
    pinned = len(parts) == 4 and parts[1] == "versions"
    if parts[-1] != "infer" or not (len(parts) == 2 or pinned):
        return None
    key = model_key(parts[0])
    return registry.family_of(key).admission if key is not None else None


class WithInferPaths(frozenset[str]):
    """The API routes, and the V2 infer path of every served model: the paths the in-flight
    limit counts (despliegue/http/guards.py: InFlightLimit), which takes exact paths."""

    def __contains__(self, path: object) -> bool:
        return super().__contains__(path) or (
            isinstance(path, str) and infer_admission(path) is not None
        )


class WithInferClasses(dict[str, str]):
    """The API routes' admission classes, and each V2 infer path's (its model's family's)."""

    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if path in self:
            return self[path]
        return infer_admission(path) or default
