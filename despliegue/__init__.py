"""Despliegue's shared machinery: configuration, errors, model artifacts, schemas.

Everything here is used by more than one model family; family-specific serving code lives in
`runners/`, the public HTTP API in `service.py`.
"""

# The product version: the OpenAPI document's info.version (pyproject.toml says the same).
__version__ = "0.1.0"

# Before any module of this package builds a BentoML tag (the antibiotic panel does at import).
from despliegue.quiet import quiet_bentoml_tag_warnings

quiet_bentoml_tag_warnings()
