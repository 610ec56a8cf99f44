"""Compiled runtimes against TensorFlow: the stored Keras models called in process, one core.

For each Keras model of the reference store (the flower classifier, the face validator, one
antibiotic model), the `.keras` file is exported to ONNX once (Keras' own exporter, what the
store keeps beside it: despliegue/compiled_runtime.py), then each runtime runs in a fresh
process pinned to one CPU with `taskset`, one thread:

- `tensorflow`: the Keras model in one traced `tf.function` (how runners call it today);
- `onnxruntime`: ONNX Runtime's CPU provider on the exported file;
- `openvino`: OpenVINO's CPU plugin on the same file (latency hint, one stream).

Each process reports the seconds to import its runtime and load the model, its resident
memory once loaded, and items/s at batch 1 and at the batch sizes the service reaches (the
mean batch in `make bench` at 32 clients is ~16 for /flowers), best of several rounds.

    python -m benchmarks.runtimes                      # the store in $BENTOML_HOME
    python -m benchmarks.runtimes --cpu 1 --seconds 2  # the core to pin, time per point
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("flower_classifier", "face_validator", "modelo_amk_nm")
RUNTIMES = ("tensorflow", "onnxruntime", "openvino")
IMAGE_BATCHES = (1, 8, 16, 32)
PANEL_BATCHES = (1, 8, 32, 128)


def export_onnx(name: str, folder: Path) -> tuple[Path, Path, list[int]]:
    """(the stored .keras file, its ONNX export in `folder`, the model's input shape)."""
    import bentoml
    import keras

    from despliegue.artifacts import verify_artifact
    from despliegue.compiled_runtime import export_onnx as export

    keras_file = verify_artifact(bentoml.models.get(name))
    model = keras.models.load_model(keras_file, compile=False)
    target = folder / f"{name}.onnx"
    export(model, target)
    return keras_file, target, [int(size) for size in model.inputs[0].shape[1:]]


def measure(
    runtime: str,
    keras_file: str,
    onnx_file: str,
    shape: list[int],
    batches: list[int],
    seconds: float,
) -> dict[str, Any]:
    """In this (pinned) process: load with `runtime`, then items/s per batch size."""
    import numpy as np

    started = time.perf_counter()
    if runtime == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        model = keras.models.load_model(keras_file, compile=False)
        forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
        )

        def call(batch: np.ndarray) -> np.ndarray:
            return np.asarray(forward(batch))
    elif runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def call(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: batch})[0]
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(onnx_file),
            "CPU",
            {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled.create_infer_request()

        def call(batch: np.ndarray) -> np.ndarray:
            return request.infer([batch])[0]

    rng = np.random.default_rng(0)
    call(rng.uniform(0, 1, size=(1, *shape)).astype(np.float32))
    load_s = time.perf_counter() - started
    rss_mib = peak_rss_kib() / 1024
    by_batch: dict[str, float] = {}
    for size in batches:
        batch = rng.uniform(0, 1, size=(size, *shape)).astype(np.float32)
        call(batch)  # warm: shapes met once
        best = 0.0
        for _ in range(3):
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / 3:
                call(batch)
                calls += 1
            best = max(best, calls * size / elapsed)
        by_batch[str(size)] = round(best, 1)
    return {"load_s": round(load_s, 2), "peak_rss_mib": round(rss_mib), "items_per_s": by_batch}


def peak_rss_kib() -> int:
    """This process's peak resident memory since it started (VmHWM: unlike ru_maxrss, not
    carried over from the parent through fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        f"# Compiled runtimes vs TensorFlow, in process ({result['date']})",
        "",
        f"One core (`taskset -c {result['cpu']}`), one thread per runtime, each runtime in a "
        f"fresh process; {result['seconds']} s per point, best of 3 rounds. {result['note']}",
        "",
        "| model | runtime | load s | peak RSS MiB | items/s by batch | vs TF at batch 1 | vs TF at largest |",  # noqa: E501
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in result["models"].items():
        tf_rates = runs["tensorflow"]["items_per_s"]
        for runtime, run in runs.items():
            rates = run["items_per_s"]
            largest = list(rates)[-1]
            cells = ", ".join(f"{size}: {rate:,.0f}" for size, rate in rates.items())
            lines.append(
                f"| {name} | {runtime} | {run['load_s']} | {run['peak_rss_mib']} | {cells} | "
                f"{rates['1'] / tf_rates['1']:.2f}× | {rates[largest] / tf_rates[largest]:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--note", default="", help="a line about the machine (e.g. shared)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        runtime, keras_file, onnx_file, shape, batches, seconds = args.child
        measured = measure(
            runtime, keras_file, onnx_file, json.loads(shape), json.loads(batches), float(seconds)
        )
        print(json.dumps(measured))
        return 0
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": args.cpu,
        "seconds": args.seconds,
        "note": args.note,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="runtimes-") as work:
        for name in args.models:
            keras_file, onnx_file, shape = export_onnx(name, Path(work))
            batches = PANEL_BATCHES if len(shape) == 1 else IMAGE_BATCHES
            runs = {}
            for runtime in RUNTIMES:
                command = [
                    "taskset", "-c", str(args.cpu), sys.executable, "-m", "benchmarks.runtimes",
                    "--child", runtime, str(keras_file), str(onnx_file), json.dumps(shape),
                    json.dumps(batches), str(args.seconds),
                ]  # fmt: skip
                output = subprocess.run(command, check=True, capture_output=True, text=True)
                runs[runtime] = json.loads(output.stdout.strip().splitlines()[-1])
                print(name, runtime, runs[runtime], flush=True)
            result["models"][name] = runs
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.date.today().isoformat()
    (RESULTS / f"runtimes-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "runtimes-latest.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
