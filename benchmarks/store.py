"""Print, as JSON, what the benchmark's other designs load from the model store, so they answer
with the very models the service serves. Run in a subprocess by benchmarks/run.py, with
BENTOML_HOME and DESPLIEGUE_CONFIG set.

    python -m benchmarks.store                  # {family key: artifact file} (seed designs, MLflow)
    python -m benchmarks.store --peer-manifest  # what the peer servers load (benchmarks/peers/)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import bentoml

from benchmarks.paths import PATHS
from despliegue.artifacts import ARTIFACT_FILE
from despliegue.config import settings
from despliegue.lifecycle.plans import served_tags


def artifact_files() -> dict[str, str]:
    """By family key, or `<panel>.<CODE>` for each member of a panel (antibiotics.AMK)."""
    files = {}
    for name, tag in served_tags().items():
        stored = bentoml.models.get(tag)
        files[name] = stored.path_of(ARTIFACT_FILE[stored.info.metadata["framework"]])
    return files


def peer_manifest() -> dict[str, Any]:
    """Per benchmark path: the stored artifact file, the model's metadata (preprocessing,
    classes), the family's threshold and batch bound; and the TensorFlow thread pools. The
    peers' venvs have no BentoML, so they read the store through this."""
    tags = served_tags()
    config = settings()
    models = {}
    for path in PATHS:
        # The family's own model (/face: the detector, not the validator the seed app loads);
        # a panel member by its key (antibiotics.AMK).
        stored = bentoml.models.get(tags.get(path.family) or tags[path.store_key])
        family = config.families[path.family]
        models[path.name] = {
            "tag": str(stored.tag),
            "file": stored.path_of(ARTIFACT_FILE[stored.info.metadata["framework"]]),
            "metadata": dict(stored.info.metadata),
            "threshold": getattr(family, "threshold", None),
            "max_batch_size": family.batching.max_batch_size,
        }
    # /super detects with the face detector's threshold before it validates.
    models["face"]["threshold"] = config.family("face_detector").threshold
    return {"models": models, "tensorflow": config.tensorflow.model_dump()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-manifest", action="store_true")
    args = parser.parse_args(argv)
    json.dump(peer_manifest() if args.peer_manifest else artifact_files(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
