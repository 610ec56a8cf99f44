"""CPU milliseconds per request, per server process: what a request path costs, read in a way a
busy machine does not blur.

Throughput on a shared machine moves with the neighbours; the CPU time the server's own
processes spend per answered request hardly does. This is how each change to the request path
was weighed before `make bench` confirmed it on a quiet machine:

    python -m benchmarks.request_cost --paths heatflow falsetrue --concurrency 1 32
    python -m benchmarks.request_cost --config other.yaml   # the same, under another configuration

Starts `bentoml serve` on the server CPU (as benchmarks/run.py does), runs each path at each
concurrency, and prints, per process (API worker, each runner), CPU ms per answered request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import servers
from benchmarks.loadgen import run_load
from benchmarks.paths import PATHS
from benchmarks.run import prepare_store


def cost_of(
    server: servers.Server, url: str, path: Any, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One point: the load's figures and the CPU ms per answered request of each process."""
    before = servers.process_cpu(server)
    result = asyncio.run(run_load(url, path, concurrency, seconds, 1.0, scrape_metrics=False))
    after = servers.process_cpu(server)
    answered = max(result["ok"], 1)
    # The warm-up second's requests are not counted; their CPU is: a slight overestimate, the
    # same for every configuration compared.
    per_request = {
        name: round(1000 * (after[name] - before.get(name, 0.0)) / answered, 3)
        for name in after
        if after[name] - before.get(name, 0.0) > 0.01
    }
    return {
        "path": path.name,
        "concurrency": concurrency,
        "throughput_rps": round(result["throughput_rps"], 1),
        "p50_ms": result.get("p50_ms"),
        "errors": result["errors"],
        "cpu_ms_per_request": per_request,
        "total_cpu_ms_per_request": round(sum(per_request.values()), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=["heatflow", "falsetrue", "antibiotics"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--config", help="DESPLIEGUE_CONFIG for the server (default: the repo's)")
    parser.add_argument("--home", help="BENTOML_HOME holding the models (default: built fresh)")
    parser.add_argument("--json", type=Path, help="also write the points to this file")
    args = parser.parse_args(argv)

    server_cpus, client_cpus = servers.split_cpus(sorted(os.sched_getaffinity(0)))
    workdir = servers.scratch_folder("cost")
    env = servers.server_env(args.home or str(workdir / "bentoml"), PYTHONPATH=str(servers.ROOT))
    if args.config:
        env["DESPLIEGUE_CONFIG"] = str(Path(args.config).resolve())
    prepare_store(env["BENTOML_HOME"], env)
    server = servers.start_bentoml(env, server_cpus, workdir / "serve.log")
    os.sched_setaffinity(0, set(client_cpus))
    points = []
    try:
        servers.wait_for(server, ["/readyz", "/models"])
        by_name = {path.name: path for path in PATHS}
        for name in args.paths:
            for concurrency in args.concurrency:
                points.append(cost_of(server, server.url, by_name[name], concurrency, args.seconds))
    finally:
        servers.stop(server)
    table = Table(title="CPU ms per answered request, by server process")
    processes = sorted({name for point in points for name in point["cpu_ms_per_request"]})
    for column in ["path", "clients", "req/s", *processes, "total"]:
        table.add_column(column, justify="right", no_wrap=True)
    for point in points:
        cells = [f"{point['cpu_ms_per_request'].get(name, 0.0):.3f}" for name in processes]
        table.add_row(
            point["path"],
            str(point["concurrency"]),
            f"{point['throughput_rps']:.0f}",
            *cells,
            f"{point['total_cpu_ms_per_request']:.3f}",
        )
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(points, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
