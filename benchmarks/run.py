"""`make bench`: every comparison of the benchmark in one run, on loopback, bounded in time.

For each path in benchmarks/paths.py:
  1. the physical limit: the runner method in-process at several batch sizes (best reported);
  2. the service (`bentoml serve`, adaptive batching as configured) at 1, 8, 32, 64 clients:
     throughput, p50/p95/p99, errors, mean batch size (from /metrics deltas);
  3. the same service with batching off (a configuration copy with max_batch_size 1);
  4. the seed's own design: its FastAPI app in one uvicorn process, one model call per request;
  5. for the antibiotic path, seed 003's design: `mlflow models serve` on the same model;
  6. for /flowers and the antibiotic panel, batch scoring in process (benchmarks/batch.py)
     against the limit and the service's best HTTP point.
Plus the cold start: seconds from `bentoml serve` to 200 on /readyz and on /models.

Path by path: every design of one path is measured back to back (a server started for it,
serving every path, then stopped) before the next path's. A ratio is then two points minutes
apart, not the length of the run: this machine's speed moved 10-40% within one run.

Everything runs in its own BENTOML_HOME with the reference models built by save_models.py.
Server-side processes (both servers, the limit) are pinned to the server CPUs and the load
generator to the client CPUs (see servers.split_cpus). Writes benchmarks/results/<date>.json
and benchmarks/results/latest.md (a --quick run: <date>-quick.json and latest-quick.md).

    python -m benchmarks.run            # every path; ~5 min per path
    python -m benchmarks.run --quick    # ~15 min, a smoke run of the whole harness
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks import batch as batch_scoring
from benchmarks import servers
from benchmarks.paths import PATHS, BenchPath, by_name, v2_body
from benchmarks.peers import launch
from benchmarks.stats import mean_batch_size, ratios_for, render_markdown

RESULTS = Path(__file__).resolve().parent / "results"
FAST_DETECTOR = "face_detector_blazeface"
OPTIONAL_DESIGNS = (
    "batching_off",
    "drift_off",
    "blazeface",
    "seed",
    "mlflow",
    "ray",
    "mlserver",
    "v2",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short points (~15 min in all)")
    parser.add_argument("--seconds", type=float, help="measured seconds per point (default 8)")
    parser.add_argument("--warmup", type=float, help="discarded seconds per point (default 2)")
    parser.add_argument(
        "--slow-seconds", type=float, help=f"seconds per point on {SLOW_PATHS} (default 15)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--paths", nargs="+", help="path names (default: all in paths.py)")
    parser.add_argument(
        "--designs",
        nargs="+",
        choices=OPTIONAL_DESIGNS,
        default=list(OPTIONAL_DESIGNS),
        help="designs besides the service with batching on (default: all)",
    )
    parser.add_argument("--seed-paths", nargs="+", help="paths given a seed design (default: all)")
    parser.add_argument("--home", help="BENTOML_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.slow_seconds = args.slow_seconds or (args.seconds if args.quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    args.limit_seconds = 2.0 if args.quick else 6.0
    return args


def prepare_store(home: str, env: dict[str, str], optional: Sequence[str] = ()) -> dict[str, str]:
    """Build the reference models into `home` (and the `optional` ones named, e.g. BlazeFace);
    return each family's artifact file."""
    command = [sys.executable, "save_models.py"]
    if optional:
        # Named models are built on their own: a second call builds the default set.
        named = subprocess.run(
            [*command, "reference", *optional], cwd=servers.ROOT, env=env, check=False
        )
        if named.returncode != 0:
            raise RuntimeError(f"save_models.py reference {' '.join(optional)} failed")
    built = subprocess.run(
        command,
        cwd=servers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(f"save_models.py failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")
    return servers.run_json(["benchmarks.store"], env, sorted(os.sched_getaffinity(0)), 120)


# Paths whose requests take hundreds of milliseconds: a few seconds hold few requests, and
# their ratios moved 10-20% between 5-second runs.
SLOW_PATHS = ("face", "super")


def seconds_for(path: BenchPath, args: argparse.Namespace) -> float:
    """Measured seconds of one point on `path`: `--slow-seconds` on the slow paths."""
    return args.slow_seconds if path.name in SLOW_PATHS else args.seconds


def load_points(
    url: str,
    path: BenchPath,
    args: argparse.Namespace,
    env: dict[str, str],
    client_cpus: Sequence[int],
    metrics: bool,
    design: str = "service",
) -> list[dict[str, Any]]:
    """One closed-loop measurement per concurrency against one running server."""
    points = []
    for concurrency in args.concurrency:
        argv = [
            "benchmarks.loadgen",
            "--url",
            url,
            "--path",
            path.name,
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds_for(path, args)),
            "--warmup",
            str(args.warmup),
        ]
        if not metrics:
            argv.append("--no-metrics")
        if design != "service":
            argv += ["--design", design]
        timeout = args.seconds + args.warmup + 180
        point = servers.run_json(argv, env, client_cpus, timeout)
        before, after = point.pop("metrics_before"), point.pop("metrics_after")
        point["mean_batch_size"] = (
            mean_batch_size(before, after, path.runner_class_name, path.method) if metrics else None
        )
        print(
            f"  {path.name:<10} {concurrency:>3} clients: {point['throughput_rps']:8.1f} req/s"
            f"  p99 {point['p99_ms']:7.1f} ms  errors {point['errors']}",
            flush=True,
        )
        points.append(point)
    return points


def measure_service(
    label: str,
    paths: Sequence[BenchPath],
    args: argparse.Namespace,
    env: dict[str, str],
    cpus: tuple[list[int], list[int]],
    workdir: Path,
    v2_points: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """The service's points per path; with `v2_points`, also its V2 route's (MLServer's body),
    from the same server."""
    print(f"service ({label})", flush=True)
    server = servers.start_bentoml(env, cpus[0], workdir / f"serve-{label}.log")
    try:
        reached = servers.wait_for(server, ["/readyz", "/models"])
        cpu = servers.process_cpu(server)
        print(f"  ready: /readyz {reached['/readyz']:.1f} s, /models {reached['/models']:.1f} s")
        print("  CPU s before ready: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
        per_path = {
            path.name: load_points(server.url, path, args, env, cpus[1], metrics=True)
            for path in paths
        }
        if v2_points is not None:
            print("service, Open Inference Protocol (V2) route", flush=True)
            for path in paths:
                v2_points[path.name] = load_points(
                    server.url, path, args, env, cpus[1], metrics=True, design="v2"
                )
    finally:
        servers.stop(server)
    cold = {"readyz_s": reached["/readyz"], "models_s": reached["/models"], "cpu_s": cpu}
    return per_path, cold


def write_results(
    out_dir: Path, prefix: str, quick: bool, result: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """`<prefix><date>[-quick].json` and `<prefix>latest[-quick].md`; quick runs never
    overwrite the full run's files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    day = dt.datetime.now(dt.UTC).date().isoformat()
    json_path = out_dir / f"{prefix}{day}{suffix}.json"
    md_path = out_dir / f"{prefix}latest{suffix}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


def measure_seed(
    path: BenchPath,
    model_file: str,
    args: argparse.Namespace,
    env: dict[str, str],
    cpus: tuple[list[int], list[int]],
    workdir: Path,
) -> list[dict[str, Any]]:
    print(f"seed design ({path.baseline})", flush=True)
    seed_env = {**env, "MODEL_FILE": model_file}
    server = servers.start_uvicorn(path.baseline, seed_env, cpus[0], workdir / f"{path.name}.log")
    try:
        servers.wait_for(server, ["/openapi.json"], timeout=120)
        return load_points(server.url, path, args, env, cpus[1], metrics=False)
    finally:
        servers.stop(server)


def measure_mlflow(
    path: BenchPath,
    model_file: str,
    args: argparse.Namespace,
    env: dict[str, str],
    cpus: tuple[list[int], list[int]],
    workdir: Path,
) -> list[dict[str, Any]] | None:
    """Seed 003's design: `mlflow models serve` on the same stored model (None: no MLflow)."""
    print(f"mlflow models serve ({path.store_key})", flush=True)
    if importlib.util.find_spec("mlflow") is None or not (servers.BIN / "mlflow").exists():
        print("  skipped: mlflow is not installed (requirements-mlflow.txt)", flush=True)
        return None
    folder = str(workdir / f"mlflow-{path.name}")
    servers.run_json(
        ["benchmarks.mlflow_model", "--model-file", model_file, "--out", folder],
        env,
        cpus[0],
        timeout=300,
    )
    server = servers.start_mlflow(folder, env, cpus[0], workdir / f"mlflow-{path.name}.log")
    try:
        servers.wait_for(server, ["/ping"], timeout=180)
        return load_points(server.url, path, args, env, cpus[1], metrics=False, design="mlflow")
    finally:
        servers.stop(server)


def check_answers(
    url: str, route: str, design: str, path: BenchPath, checks: list[dict[str, Any]]
) -> None:
    """Each check body through the peer must give the answers of the model called directly
    (benchmarks/limit.py); a peer that answers differently is not measured."""
    for check in checks:
        body = v2_body(path, check["body"]) if design == "mlserver" else check["body"]
        response = httpx.post(url + route, json=body, timeout=120)
        response.raise_for_status()
        got = launch.answers_of(design, path.name, response.json())
        if not launch.same_answers(got, check["answers"]):
            raise RuntimeError(
                f"{design} answers {path.name} differently from the model called directly:\n"
                f"{str(got)[:500]}\nexpected {str(check['answers'])[:500]}"
            )


def measure_peer(
    peer: str,
    served: Sequence[BenchPath],
    paths: Sequence[BenchPath],
    checks: dict[str, list[dict[str, Any]]],
    manifest: Path,
    args: argparse.Namespace,
    env: dict[str, str],
    cpus: tuple[list[int], list[int]],
    workdir: Path,
    warnings: list[str],
) -> tuple[dict[str, list[dict[str, Any]]], float] | None:
    """One peer serving every path of the run at once (as the service does); on `paths`, each
    path's answers checked, then the same load points as the service. None: the peer's venv is
    not installed."""
    print(f"peer: {launch.LABELS[peer]}", flush=True)
    if not launch.installed(peer):
        print(f"  skipped: .venv-{peer} is missing (make peer-venvs)", flush=True)
        return None
    names = [path.name for path in served]
    server = launch.start(peer, manifest, names, env, cpus[0], workdir)
    design = "mlserver" if peer == "mlserver" else "service"
    try:
        ready = launch.wait_ready(peer, server, names)
        print(f"  ready after {ready:.1f} s", flush=True)
        per_path = {}
        for path in paths:
            route = path.request(design)[0]
            try:
                check_answers(server.url, route, design, path, checks[path.name])
            except (RuntimeError, httpx.HTTPError) as exc:
                # This path is not measured; the peer's other paths still are.
                warnings.append(f"{peer} {path.name} not measured: {str(exc)[:1500]}")
                print(f"WARNING: {warnings[-1]}", flush=True)
                continue
            per_path[path.name] = load_points(
                server.url, path, args, env, cpus[1], metrics=False, design=design
            )
    finally:
        servers.stop(server, leader_first=peer == "ray")
    return per_path, ready


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    paths = [by_name(name) for name in args.paths] if args.paths else list(PATHS)
    cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    workdir = servers.scratch_folder("bench")
    home = args.home or str(workdir / "bentoml")
    base_config = Path(os.environ.get("DESPLIEGUE_CONFIG", servers.ROOT / "configuration.yaml"))
    env = servers.server_env(home, DESPLIEGUE_CONFIG=str(base_config))
    designs = 2 + sum(bool(p.baseline) + bool(p.mlflow_body) for p in paths) / len(paths)
    points = len(paths) * len(args.concurrency) * designs
    estimate = points * (args.seconds + args.warmup) + len(paths) * args.limit_seconds
    print(
        f"server CPUs {cpus[0]}, client CPUs {cpus[1]}; work dir {workdir}; "
        f"{points:.0f} points, ~{estimate / 60:.0f} min of load, "
        "plus a server start per path and design",
        flush=True,
    )

    optional = [FAST_DETECTOR] if "blazeface" in args.designs else []
    model_files = prepare_store(home, env, optional)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": servers.machine(*cpus),
        "settings": {
            "quick": args.quick,
            "seconds": args.seconds,
            "slow_seconds": args.slow_seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "limit_seconds": args.limit_seconds,
            # Named from the checkout when it is the project's own file (results are committed).
            "configuration": str(
                base_config.resolve().relative_to(servers.ROOT.resolve())
                if base_config.resolve().is_relative_to(servers.ROOT.resolve())
                else base_config
            ),
        },
        "paths": {},
    }
    checks: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        print(f"physical limit: {path.name}", flush=True)
        limit = servers.run_json(
            ["benchmarks.limit", "--path", path.name, "--seconds", str(args.limit_seconds)],
            env,
            cpus[0],
            timeout=600,
        )
        print(f"  best {limit['best_items_per_s']:.0f} items/s at {limit['best_batch_size']}")
        checks[path.name] = limit.pop("check")
        result["paths"][path.name] = {
            "route": path.route,
            "items_per_request": path.items_per_request,
            "limit": limit,
            "designs": {},
        }

    off_config = servers.batching_off_config(base_config, workdir / "batching-off.yaml")
    no_drift_config = servers.drift_off_config(base_config, workdir / "drift-off.yaml")
    fast_config = servers.detector_config(base_config, workdir / "fast.yaml", FAST_DETECTOR)
    service_variants = {  # design -> (label, configuration, paths it is measured on)
        "batching_off": ("batching-off", off_config, paths),
        "drift_off": ("drift-off", no_drift_config, paths),
        # The face paths once more with the fast detector (BlazeFace) instead of MTCNN.
        "blazeface": ("blazeface", fast_config, [p for p in paths if p.family.startswith("face_")]),
    }
    manifest = workdir / "peer-manifest.json"
    peer_manifest = servers.run_json(["benchmarks.store", "--peer-manifest"], env, cpus[0], 120)
    manifest.write_text(json.dumps(peer_manifest), encoding="utf-8")
    result["warnings"] = []
    cold: dict[str, Any] = {}
    for path in paths:
        print(f"== {path.name}: every design, back to back", flush=True)
        designs = result["paths"][path.name]["designs"]
        v2: dict[str, list[dict[str, Any]]] | None = {} if "v2" in args.designs else None
        on, started_cold = measure_service("batching-on", [path], args, env, cpus, workdir, v2)
        cold = cold or started_cold  # the first start: nothing of the run cached yet
        designs["batching_on"] = on[path.name]
        if v2:
            designs["v2"] = v2[path.name]
        if path.name in batch_scoring.BENCH_PATHS:
            # Batch scoring on the server CPUs, against the limit and the HTTP points just taken.
            items = 500 if args.quick else 2000
            print(f"batch scoring: {path.name}, {items} items", flush=True)
            measured = servers.run_json(
                ["benchmarks.batch", "--path", path.name, "--items", str(items)], env, cpus[0], 900
            )
            scored = batch_scoring.goals(
                measured, result["paths"][path.name]["limit"], on[path.name],
                path.items_per_request,
            )  # fmt: skip
            result["paths"][path.name]["batch"] = scored
            print(
                f"  {scored['items_per_s']:.0f} items/s: {scored['vs_ceiling'] or 0:.2f} of the "
                f"one-core ceiling, {scored['vs_http'] or 0:.1f}x HTTP; RSS "
                f"{scored['rss_growth_mib']:+.0f} MiB",
                flush=True,
            )
        for design, (label, config, measured_paths) in service_variants.items():
            if design in args.designs and path in measured_paths:
                variant_env = {**env, "DESPLIEGUE_CONFIG": str(config)}
                points = measure_service(label, [path], args, variant_env, cpus, workdir)[0]
                designs[design] = points[path.name]
        if any(point["mean_batch_size"] is not None for point in designs.get("batching_off", [])):
            result["warnings"].append(
                f"{path.name}: the batching-off run still merged requests into runner calls; the "
                "API must call the runner through `coalesce(...)`, which honours "
                "`batching.enabled`"
            )
            print(f"WARNING: {result['warnings'][-1]}")
        for peer in (peer for peer in launch.PEERS if peer in args.designs):
            try:
                measured_peer = measure_peer(
                    peer, paths, [path], checks, manifest, args, env, cpus, workdir,
                    result["warnings"],
                )  # fmt: skip
            except (RuntimeError, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
                # A peer that fails to start or answers wrong is reported, not measured.
                result["warnings"].append(f"{peer} not measured on {path.name}: {str(exc)[:1500]}")
                print(f"WARNING: {result['warnings'][-1]}", flush=True)
                continue
            if measured_peer is not None:
                per_path, ready = measured_peer
                cold.setdefault(f"{peer}_s", ready)
                if path.name in per_path:
                    designs[peer] = per_path[path.name]
        seeded = "seed" in args.designs and path.name in (args.seed_paths or [path.name])
        if path.baseline and seeded:
            designs["seed"] = measure_seed(
                path, model_files[path.store_key], args, env, cpus, workdir
            )
        if path.mlflow_body and "mlflow" in args.designs:
            served = measure_mlflow(path, model_files[path.store_key], args, env, cpus, workdir)
            if served is not None:
                designs["mlflow"] = served
        result["paths"][path.name]["ratios"] = {
            str(c): ratios_for(result["paths"][path.name], c) for c in args.concurrency
        }
    result["cold_start"] = cold
    result["duration_s"] = time.monotonic() - started

    json_path, md_path = write_results(
        args.out_dir,
        "",
        args.quick,
        result,
        render_markdown(result) + batch_scoring.markdown(result),
    )
    print(f"wrote {json_path} and {md_path} in {result['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
