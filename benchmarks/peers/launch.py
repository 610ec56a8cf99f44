"""Start the peer model servers for the benchmark, from the service's venv: each peer runs in
its own venv (.venv-ray, .venv-mlserver, made by `make peer-venvs` from the pinned files in
this folder) on the same server CPUs as the service, and loads the same stored models through
the manifest `benchmarks.store --peer-manifest` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.peers.models import read_manifest

PEERS = ("ray", "mlserver")
LABELS = {"ray": "Ray Serve 2.60 (@serve.batch)", "mlserver": "MLServer 1.7 (adaptive batching)"}
# MLServer merges requests for at most max_batch_time; the service waits for no timer (a
# merged call leaves when the previous call returns), so the smallest useful wait is used.
MLSERVER_BATCH_WAIT_S = 0.002
SKLEARN_PATHS = ("heatflow", "falsetrue")
READY_LINE = "ray serve peer ready"  # printed by benchmarks/peers/ray_serve.py


def peer_python(peer: str) -> Path:
    return servers.ROOT / f".venv-{peer}" / "bin" / "python"


def installed(peer: str) -> bool:
    return (servers.ROOT / f".venv-{peer}" / ".installed").exists()


def start(
    peer: str,
    manifest_file: Path,
    paths: list[str],
    env: dict[str, str],
    cpus: list[int],
    workdir: Path,
) -> servers.Server:
    """The peer serving `paths`, pinned to `cpus` (see `wait_ready`)."""
    env = {**env, "PYTHONPATH": str(servers.ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    log = workdir / f"peer-{peer}.log"
    port = servers.free_port()
    if peer == "ray":
        argv = [str(peer_python("ray")), "-m", "benchmarks.peers.ray_serve"]
        argv += ["--manifest", str(manifest_file), "--port", str(port), "--paths", *paths]
    else:
        ports = (port, servers.free_port(), servers.free_port())
        repository = write_mlserver_repository(workdir / "mlserver", manifest_file, ports, paths)
        argv = [str(peer_python("mlserver").parent / "mlserver"), "start", str(repository)]
    return servers.spawn(argv, env, cpus, log, port)


def wait_ready(peer: str, server: servers.Server, paths: list[str]) -> float:
    """Seconds until every path's model answers: MLServer's per-model readiness; Ray's
    driver says so once `serve.run` has returned for every application."""
    if peer == "ray":
        return servers.wait_for_log(server, READY_LINE)
    routes = ["/v2/health/ready", *(f"/v2/models/{path}/ready" for path in paths)]
    return servers.wait_for(server, routes)[routes[-1]]


def write_mlserver_repository(
    folder: Path, manifest_file: Path, ports: tuple[int, int, int], paths: list[str]
) -> Path:
    """A model repository for `mlserver start`: HTTP, gRPC and metrics ports; one model per
    path, named after it (POST /v2/models/<path>/infer), adaptive batching on each: the
    sklearn families on MLServer's scikit-learn runtime, the others on PathRuntime."""
    manifest = read_manifest(manifest_file)
    http_port, grpc_port, metrics_port = ports
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        # 0: answer from the server process itself; a worker pool fails to start here
        # ("There is no current event loop in thread 'MainThread'").
        "parallel_workers": 0,
        "load_models_at_startup": True,
    }
    (folder / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    for path in paths:
        entry = manifest["models"][path]
        parameters: dict[str, Any]
        if path in SKLEARN_PATHS:
            implementation = "mlserver_sklearn.SKLearnModel"
            parameters = {"uri": entry["file"]}
        else:
            implementation = "benchmarks.peers.mlserver_runtime.PathRuntime"
            parameters = {"extra": {"path": path, "manifest": str(manifest_file)}}
        model_settings = {
            "name": path,
            "implementation": implementation,
            "parameters": parameters,
            "max_batch_size": entry["max_batch_size"],
            "max_batch_time": MLSERVER_BATCH_WAIT_S,
        }
        (folder / path).mkdir(exist_ok=True)
        (folder / path / "model-settings.json").write_text(
            json.dumps(model_settings), encoding="utf-8"
        )
    return folder


def answers_of(design: str, path: str, response: dict[str, Any]) -> list[Any]:
    """A peer's answers from its response body, in the shapes benchmarks/peers/models.py
    gives (the Ray peer: `{"answers": [...]}`; MLServer: V2 output tensors)."""
    if design != "mlserver":
        return response["answers"]
    outputs = {output["name"]: output for output in response["outputs"]}
    if path == "heatflow":
        return outputs["predict"]["data"]
    if path == "falsetrue":
        labels = outputs["predict"]["data"]
        probabilities = np.asarray(outputs["predict_proba"]["data"]).reshape(len(labels), -1)
        return [[label, p[1]] for label, p in zip(labels, probabilities.tolist(), strict=True)]
    if path == "face":
        return [json.loads(rows) for rows in outputs["faces"]["data"]]
    answers = outputs["answers"]
    if path == "super":  # one score per image; MLServer's codec sends a 1-D array as [n, 1]
        return np.asarray(answers["data"]).reshape(-1).tolist()
    return np.asarray(answers["data"]).reshape(answers["shape"]).tolist()


def same_answers(got: Any, expected: Any, tolerance: float = 2e-3) -> bool:
    """Equal nested lists of numbers, to `tolerance` (float32 vs float64, rounding)."""
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(same_answers(g, e, tolerance) for g, e in zip(got, expected, strict=True))
        )
    return isinstance(got, int | float) and abs(float(got) - float(expected)) <= tolerance
