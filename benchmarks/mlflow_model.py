"""Write one stored Keras model as an MLflow model folder (the keras flavor, as seed 003 logs
its antibiotic models), for `mlflow models serve`; prints the folder as JSON.

No tracking server is needed: `mlflow.keras.save_model` writes the same MLmodel + weights a
logged run holds, and `mlflow models serve -m FOLDER` serves it. The pip requirements are
given, not inferred, so nothing is resolved over the network.

    python -m benchmarks.mlflow_model --model-file .../model.keras --out /tmp/amk-mlflow
"""

from __future__ import annotations

import argparse
import json
import sys


def save(model_file: str, out: str) -> str:
    import keras
    import mlflow

    model = keras.models.load_model(model_file, compile=False)
    mlflow.keras.save_model(model, out, pip_requirements=[f"keras=={keras.__version__}"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", required=True, help="a stored model.keras")
    parser.add_argument("--out", required=True, help="the MLflow model folder to write")
    args = parser.parse_args(argv)
    json.dump(save(args.model_file, args.out), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
