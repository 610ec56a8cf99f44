"""MTCNN on TensorFlow (mtcnn 1.0.0) against the compiled detector (despliegue/mtcnn_compiled.py).

Everything runs in this one process, pinned to one core (`--cpu`), one thread per runtime, and
the runtimes are measured in interleaved rounds (median of the rounds), so a shared machine
slows them alike and only the ratios are compared:

- networks: P-Net over the pyramid of a 512 px photo (10 calls), R-Net on 100 patches, O-Net
  on 4 and 32 patches (the shapes the face set produces), in TensorFlow as mtcnn calls them
  (Keras, eagerly), in one traced `tf.function`, in ONNX Runtime and in OpenVINO (f32, when
  installed: a dev requirement, not served);
- detectors: images/s of mtcnn on TensorFlow, and of the compiled detector on ONNX Runtime
  (what is served) and on OpenVINO, one 512 px photo per call (what /face does), a batch of 8
  face-set scenes (the runner's max batch), one 1024 px image (the API's `max_side`);
- detections: on the offline face set (benchmarks/faces_quality.py), each compiled detector's
  faces against mtcnn's (IoU, landmark distance) and recall at confidence 0.9.

    python -m benchmarks.mtcnn_runtimes --cpu 1 --seconds 1 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PYRAMID_512 = (307, 217, 154, 109, 77, 55, 39, 27, 19, 13)
CONFIDENT = 0.9


def stored_folder(work: Path) -> tuple[Path, dict[str, Any]]:
    """The package's weights (what the reference build stores) compiled beside them."""
    from despliegue.mtcnn_compiled import STAGES, compile_beside

    weights = resources.files("mtcnn.assets.weights")
    entries = {}
    for stage in STAGES:
        shutil.copyfile(str(weights / f"{stage}.lz4"), work / f"{stage}.lz4")
        entries[stage] = {"file": f"{stage}.lz4"}
    manifest = work / "mtcnn.json"
    manifest.write_text(json.dumps({"package": "mtcnn", "weights": entries}), encoding="utf-8")
    compiled = compile_beside(manifest)
    if compiled["runtime"] != "onnxruntime":
        raise SystemExit(f"the export was refused: {compiled.get('reason')}")
    return work, compiled


def openvino_networks(folder: Path) -> dict[str, Callable[[np.ndarray], list[np.ndarray]]] | None:
    """The same ONNX files in OpenVINO's CPU plugin, f32 (bf16 on AMX CPUs would differ by
    ~1e-2), one thread; None when OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from despliegue.mtcnn_compiled import STAGES

    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": 1,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    networks = {}
    for stage in STAGES:
        compiled = core.compile_model(core.read_model(str(folder / f"{stage}.onnx")), "CPU", config)
        networks[stage] = lambda batch, c=compiled: list(
            c(np.ascontiguousarray(batch, dtype=np.float32)).values()
        )
    return networks


def interleaved(
    cases: dict[str, Callable[[], Any]], rounds: int, seconds: float
) -> dict[str, float]:
    """Calls per second of each case, median over rounds that take turns."""
    for call in cases.values():
        call()
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in cases.items():
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds or calls < 2:
                call()
                calls += 1
            rates[name].append(calls / elapsed)
    return {name: float(np.median(values)) for name, values in rates.items()}


def network_speeds(
    tf_models: dict[str, Any], onnx: dict[str, Any], openvino: dict[str, Any] | None, args: Any
) -> dict[str, dict[str, float]]:
    import tensorflow as tf

    rng = np.random.default_rng(30)
    shapes = {
        "P-Net, pyramid of a 512 px image (10 calls)": (
            "pnet",
            [(1, side, side, 3) for side in PYRAMID_512],
        ),
        "R-Net, 100 patches": ("rnet", [(100, 24, 24, 3)]),
        "O-Net, 4 patches": ("onet", [(4, 48, 48, 3)]),
        "O-Net, 32 patches": ("onet", [(32, 48, 48, 3)]),
    }
    traced = {
        stage: tf.function(model, reduce_retracing=True) for stage, model in tf_models.items()
    }
    measured = {}
    for case, (stage, sizes) in shapes.items():
        batches = [rng.uniform(-1, 1, size).astype(np.float32) for size in sizes]
        runtimes: dict[str, Callable[[np.ndarray], Any]] = {
            "tensorflow (eager, as mtcnn)": tf_models[stage],
            "tensorflow (tf.function)": traced[stage],
            "onnxruntime": onnx[stage],
        }
        if openvino is not None:
            runtimes["openvino f32"] = openvino[stage]
        calls = {
            name: (lambda run=run, batches=batches: [run(batch) for batch in batches])
            for name, run in runtimes.items()
        }
        measured[case] = interleaved(calls, args.rounds, args.seconds)
        print(case, {k: round(v, 1) for k, v in measured[case].items()}, flush=True)
    return measured


def detector_speeds(detectors: dict[str, Any], args: Any) -> dict[str, dict[str, float]]:
    from PIL import Image

    from benchmarks.faces_quality import scenes
    from benchmarks.paths import _astronaut

    photo = _astronaut()
    large = np.asarray(Image.fromarray(photo).resize((1024, 1024), Image.Resampling.BILINEAR))
    batch = [image for _, image, _ in scenes()[:8]]
    workloads = {
        "512 px photo, 1 per call": ([photo], 1),
        "8 face-set scenes (512 px), 1 call": (batch, 8),
        "1024 px image, 1 per call": ([large], 1),
    }
    measured = {}
    for workload, (images, count) in workloads.items():
        calls = {
            name: (lambda d=d, images=images: d.detect_faces(images))
            for name, d in detectors.items()
        }
        rates = interleaved(calls, args.rounds, args.seconds)
        measured[workload] = {name: rate * count for name, rate in rates.items()}
        print(workload, {k: round(v, 1) for k, v in measured[workload].items()}, flush=True)
    return measured


def detections(detectors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each detector's faces on the face set against mtcnn's on TensorFlow (the first)."""
    from benchmarks.faces_quality import iou, match, scenes

    names = list(detectors)
    answers = {name: [] for name in names}
    truths = []
    for _, image, truth in scenes():
        truths.append(truth)
        for name in names:
            answers[name].append(detectors[name].detect_faces([image])[0])
    reference = answers[names[0]]
    compared = {}
    for name in names:
        lowest_iou, farthest, unmatched, found = 1.0, 0.0, 0, 0
        for expected, answered, truth in zip(reference, answers[name], truths, strict=True):
            confident = [f["box"] for f in answered if f["confidence"] >= CONFIDENT]
            found += match(confident, truth)
            for face in expected:
                twin = max(answered, key=lambda o, f=face: iou(f["box"], o["box"]), default=None)
                overlap = 0.0 if twin is None else iou(face["box"], twin["box"])
                if twin is None or overlap < 0.9:
                    unmatched += 1
                    continue
                lowest_iou = min(lowest_iou, overlap)
                for point, (x, y) in face["keypoints"].items():
                    tx, ty = twin["keypoints"][point]
                    farthest = max(farthest, abs(x - tx), abs(y - ty))
        compared[name] = {
            "faces": sum(len(faces) for faces in answers[name]),
            "mtcnn_faces_unmatched": unmatched,
            "lowest_iou": lowest_iou,
            "largest_landmark_px": farthest,
            "recall_at_0.9": found / sum(len(t) for t in truths),
        }
    return compared


def render(result: dict[str, Any]) -> Any:
    from rich.table import Table

    tables = []
    for section, base in (("networks", "tensorflow (eager, as mtcnn)"), ("detectors", "mtcnn")):
        table = Table(title=f"{section}: per second, and x {base}")
        rows = result[section]
        columns = list(next(iter(rows.values())))
        table.add_column("case")
        for column in columns:
            table.add_column(column, justify="right")
        for case, rates in rows.items():
            cells = [f"{rates[c]:.1f} (x{rates[c] / rates[base]:.2f})" for c in columns]
            table.add_row(case, *cells)
        tables.append(table)
    quality = Table(title="detections on the face set, against mtcnn on TensorFlow")
    quality.add_column("detector")
    fields = list(next(iter(result["detections"].values())))
    for field in fields:
        quality.add_column(field, justify="right")
    for name, values in result["detections"].items():
        quality.add_row(name, *(f"{values[f]:.3g}" for f in fields))
    tables.append(quality)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--note", default="", help="a line about the machine (e.g. shared)")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # as the face runner runs it
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from rich.console import Console

    from despliegue.artifacts import _load_mtcnn
    from despliegue.compiled_runtime import OnnxModel
    from despliegue.mtcnn_compiled import STAGES, CompiledMTCNN, load_compiled

    with tempfile.TemporaryDirectory(prefix="mtcnn-runtimes-") as work:
        folder, compiled = stored_folder(Path(work))
        reference = _load_mtcnn(folder / "mtcnn.json")
        tf_models = {stage.name.split()[1].lower(): stage.model for stage in reference.stages}
        onnx = {stage: OnnxModel(folder / f"{stage}.onnx", 1).outputs for stage in STAGES}
        openvino = openvino_networks(folder)
        detectors: dict[str, Any] = {
            "mtcnn": reference,
            "compiled, onnxruntime": load_compiled(folder, compiled, 1),
        }
        if openvino is not None:
            detectors["compiled, openvino f32"] = CompiledMTCNN(**openvino)
        result: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpu": args.cpu,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "note": args.note,
            "load_average": os.getloadavg(),
            "compiled": compiled,
            "networks": network_speeds(tf_models, onnx, openvino, args),
            "detectors": detector_speeds(detectors, args),
            "detections": detections(detectors),
        }
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.date.today().isoformat()
    (RESULTS / f"mtcnn-runtimes-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    console = Console(width=150)
    for table in render(result):
        console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
