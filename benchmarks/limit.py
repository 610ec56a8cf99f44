"""The physical limit: a path's runner method called in-process, no HTTP, at several batch
sizes; prints one JSON result.

The runner class is instantiated the way BentoML does it (`Runner()` loads the model from the
store named by BENTOML_HOME, as configured by DESPLIEGUE_CONFIG), and its batchable method is
called directly (or, for /super, the detector then the validator on the crops, as the API
does), so the limit runs exactly the code the service runs per batch. The caller pins
this process to the server CPUs.

    python -m benchmarks.limit --path heatflow --seconds 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

import numpy as np

from benchmarks.paths import BenchPath, by_name


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
        call(batch)  # warm caches, lazy initialisation, graph tracing
        calls = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < per_size or calls < 3:
            call(batch)
            calls += 1
        rates[str(size)] = calls * size / elapsed
    best = max(rates, key=rates.__getitem__)
    return {"items_per_s": rates, "best_batch_size": int(best), "best_items_per_s": rates[best]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="a name from benchmarks/paths.py")
    parser.add_argument("--seconds", type=float, default=6.0, help="total over all batch sizes")
    args = parser.parse_args(argv)
    json.dump(measure_limit(by_name(args.path), args.seconds), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
