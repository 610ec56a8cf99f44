"""Print, as JSON, the artifact file of the model each family serves: the file the seed-style
baselines (and the MLflow folder) load, so they answer with the very model the service serves.
Run in a subprocess by benchmarks/run.py, with BENTOML_HOME and DESPLIEGUE_CONFIG set.
"""

from __future__ import annotations

import json
import sys

import bentoml

from despliegue.artifacts import ARTIFACT_FILE
from despliegue.lifecycle import served_tags


def artifact_files() -> dict[str, str]:
    """By family key, or `<panel>.<CODE>` for each member of a panel (antibiotics.AMK)."""
    files = {}
    for name, tag in served_tags().items():
        stored = bentoml.models.get(tag)
        files[name] = stored.path_of(ARTIFACT_FILE[stored.info.metadata["framework"]])
    return files


if __name__ == "__main__":
    json.dump(artifact_files(), sys.stdout)
