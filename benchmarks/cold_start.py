"""Cold start and runner memory with compiled runtimes on and off, in one run.

The same store (reference models with their checked ONNX exports, built by save_models.py)
is served twice by `bentoml serve`, pinned to the server CPUs: once as configured
(`tensorflow.compiled: true`) and once with a configuration copy that serves every Keras model
with TensorFlow. For each: seconds to 200 on /readyz and /models, CPU seconds per process
before ready, each process's resident memory once ready, and which processes loaded
TensorFlow (its shared library mapped).

    python -m benchmarks.cold_start            # a fresh store in a scratch BENTOML_HOME
    python -m benchmarks.cold_start --home DIR # an existing store (built by this code)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks import servers
from benchmarks.run import RESULTS, prepare_store


def process_facts(server: servers.Server) -> dict[str, dict[str, Any]]:
    """Per process (BentoML workers by service name): RSS MiB and whether TensorFlow is in."""
    facts: dict[str, dict[str, Any]] = {}
    for name, process in servers.named_processes(server):
        with contextlib.suppress(psutil.Error):
            maps = Path(f"/proc/{process.pid}/maps").read_text(errors="replace")
            facts[name] = {
                "rss_mib": round(process.memory_info().rss / 2**20),
                "tensorflow": "libtensorflow" in maps,
                "onnxruntime": "onnxruntime" in maps,
            }
    return facts


def compiled_off(base: Path, target: Path) -> Path:
    settings = yaml.safe_load(base.read_text())
    settings["tensorflow"]["compiled"] = False
    target.write_text(yaml.safe_dump(settings, sort_keys=False))
    return target


def measure(label: str, env: dict[str, str], cpus: list[int], workdir: Path) -> dict[str, Any]:
    server = servers.start_bentoml(env, cpus, workdir / f"serve-{label}.log")
    try:
        reached = servers.wait_for(server, ["/readyz", "/models"])
        cpu = servers.process_cpu(server)
        facts = process_facts(server)
    finally:
        servers.stop(server)
    result = {
        "readyz_s": round(reached["/readyz"], 1),
        "models_s": round(reached["/models"], 1),
        "cpu_s": {name: round(seconds, 1) for name, seconds in cpu.items()},
        "processes": facts,
    }
    print(label, json.dumps(result), flush=True)
    return result


def render(result: dict[str, Any]) -> str:
    runs = result["runs"]
    names = sorted({name for run in runs.values() for name in run["processes"]})
    lines = [
        f"# Cold start, compiled runtimes on and off ({result['date']})",
        "",
        f"`bentoml serve` pinned to CPUs {result['server_cpus']}. {result['note']}",
        "",
        "| | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
        "| /readyz s | " + " | ".join(str(run["readyz_s"]) for run in runs.values()) + " |",
        "| /models s | " + " | ".join(str(run["models_s"]) for run in runs.values()) + " |",
        "| CPU s before ready | "
        + " | ".join(f"{sum(run['cpu_s'].values()):.1f}" for run in runs.values())
        + " |",
    ]
    for name in names:
        cells = []
        for run in runs.values():
            fact = run["processes"].get(name)
            cells.append(
                "–"
                if fact is None
                else f"{fact['rss_mib']} MiB{', TF' if fact['tensorflow'] else ''}"
                f"{', ORT' if fact['onnxruntime'] else ''}"
            )
        lines.append(f"| {name} RSS | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="BENTOML_HOME with the reference models (else built)")
    parser.add_argument("--note", default="", help="a line about the machine (e.g. shared)")
    args = parser.parse_args(argv)
    cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))[0]
    workdir = servers.scratch_folder("cold")
    base = Path(os.environ.get("DESPLIEGUE_CONFIG", servers.ROOT / "configuration.yaml"))
    env = servers.server_env(args.home or str(workdir / "bentoml"), DESPLIEGUE_CONFIG=str(base))
    if not args.home:
        prepare_store(env["BENTOML_HOME"], env)
    off = {**env, "DESPLIEGUE_CONFIG": str(compiled_off(base, workdir / "tensorflow.yaml"))}
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "server_cpus": cpus,
        "note": args.note,
        "runs": {
            "TensorFlow (compiled: false)": measure("tensorflow", off, cpus, workdir),
            "compiled (as configured)": measure("compiled", env, cpus, workdir),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.date.today().isoformat()
    (RESULTS / f"cold-start-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "cold-start-latest.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
