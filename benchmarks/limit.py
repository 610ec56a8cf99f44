"""The physical limit: a path's runner method called in-process, no HTTP, at several batch
sizes; prints one JSON result.

The runner class is instantiated the way BentoML does it (`Runner()` loads the model from the
store named by BENTOML_HOME, as configured by DESPLIEGUE_CONFIG), and its batchable method is
called directly (or, for /super, the detector then the validator on the crops, as the API
does), so the limit runs exactly the code the service runs per batch. The caller pins
this process to the server CPUs.

For paths whose API does its own work per request (image decoding), that work is timed too,
on the benchmark's own request bodies, and combined with the limit into the one-core
ceiling: items/s if the CPU did nothing but the model at its best batch and that work,
1 / (1/limit + 1/api_work). No server on these cores can beat it.

It also answers a few request bodies with the runner (the model called directly), so the
harness can check that each peer server answers them the same (benchmarks/peers/).

    python -m benchmarks.limit --path heatflow --seconds 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.paths import BenchPath, by_name, direct_answers

CHECK_SEED = 17
CHECK_BODIES = 2


def rate(work: Callable[[], Any], items: int, seconds: float) -> float:
    """Items per second of `work` (which handles `items` items), after one warm-up call."""
    work()  # warm caches, lazy initialisation, graph tracing
    calls = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or calls < 3:
        work()
        calls += 1
    return calls * items / elapsed


def measure_limit(path: BenchPath, seconds: float) -> dict[str, Any]:
    module_name, _, class_name = path.runner.partition(":")
    runner = getattr(importlib.import_module(module_name), class_name)()

    def call(batch: Any) -> Any:
        return path.call_limit(runner, batch)

    rng = np.random.default_rng(8)
    per_size = seconds / len(path.limit_batch_sizes)
    rates: dict[str, float] = {}
    for size in path.limit_batch_sizes:
        batch = path.make_batch(rng, size)
        rates[str(size)] = rate(lambda batch=batch: call(batch), size, per_size)
    best = max(rates, key=rates.__getitem__)
    result: dict[str, Any] = {
        "items_per_s": rates,
        "best_batch_size": int(best),
        "best_items_per_s": rates[best],
        "api_work_items_per_s": None,
        "ceiling_items_per_s": rates[best],
    }
    if path.api_work is not None:
        api_work = path.api_work
        bodies = [path.make_body(rng) for _ in range(16)]
        items = len(bodies) * path.items_per_request
        api_rate = rate(lambda: [api_work(body) for body in bodies], items, per_size)
        result["api_work_items_per_s"] = api_rate
        result["ceiling_items_per_s"] = 1.0 / (1.0 / rates[best] + 1.0 / api_rate)
    # Bodies with the answers the runner gives them here: the peers must give the same.
    check_rng = np.random.default_rng(CHECK_SEED)
    bodies = [path.make_body(check_rng) for _ in range(CHECK_BODIES)]
    result["check"] = [
        {"body": body, "answers": direct_answers(path, runner, body)} for body in bodies
    ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="a name from benchmarks/paths.py")
    parser.add_argument("--seconds", type=float, default=6.0, help="total over all batch sizes")
    args = parser.parse_args(argv)
    json.dump(measure_limit(by_name(args.path), args.seconds), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
