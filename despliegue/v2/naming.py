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
