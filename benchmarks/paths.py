"""What the benchmark measures: one `BenchPath` per public endpoint, declared, not coded.

Each entry says how to build one request, which runner method is the model call (the physical
limit calls that very method in-process, so the limit and the service run the same code), and
which seed-style FastAPI app (benchmarks/baselines/) is the design a user would run instead.

Adding a path (e.g. the flowers CNN) is one entry in PATHS:

    BenchPath(
        name="flowers",
        route="/flowers",
        family="flowers",                         # key under `families:` in configuration.yaml
        runner="runners.flowers:FlowerClassifier",
        method="classify",                        # the batchable method = metrics method_name
        make_body=flower_body,                    # rng -> JSON dict (or bytes + content_type)
        make_batch=flower_batch,                  # (rng, n) -> what `classify` takes for n items
        baseline="benchmarks.baselines.flowers_seed:app",
        limit_batch_sizes=(1, 8, 32, 64, 128),
    )

and, for the seed design, a FastAPI module in benchmarks/baselines/ that loads the file named
by the MODEL_FILE environment variable and calls the model once per request. This module is
imported by the load generator and by locust (gevent), so keep heavy imports inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Body = dict[str, Any] | bytes


@dataclass(frozen=True)
class BenchPath:
    name: str
    route: str
    family: str
    runner: str
    method: str
    make_body: Callable[[np.random.Generator], Body]
    make_batch: Callable[[np.random.Generator, int], Any]
    baseline: str | None = None
    content_type: str = "application/json"
    items_per_request: int = 1
    limit_batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128, 256)

    @property
    def runner_class_name(self) -> str:
        return self.runner.rpartition(":")[2]


def _thickness(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.uniform(0.0, 12_000.0, size=n), 1)


def heatflow_body(rng: np.random.Generator) -> Body:
    return {"sediment_thickness_m": _thickness(rng, 1).tolist()}


def heatflow_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    return _thickness(rng, n)


def _headlines(rng: np.random.Generator, n: int) -> list[str]:
    from despliegue.families.falsetrue import load_corpus

    texts, _ = load_corpus()
    return [texts[i] for i in rng.integers(0, len(texts), size=n)]


def falsetrue_body(rng: np.random.Generator) -> Body:
    return {"texts": _headlines(rng, 1)}


def falsetrue_batch(rng: np.random.Generator, n: int) -> list[str]:
    return _headlines(rng, n)


PATHS: tuple[BenchPath, ...] = (
    BenchPath(
        name="heatflow",
        route="/heatflow",
        family="heatflow",
        runner="runners.heatflow:HeatFlowRegressor",
        method="predict",
        make_body=heatflow_body,
        make_batch=heatflow_batch,
        baseline="benchmarks.baselines.heatflow_seed:app",
    ),
    BenchPath(
        name="falsetrue",
        route="/falsetrue",
        family="falsetrue",
        runner="runners.falsetrue:FalseTrueClassifier",
        method="classify",
        make_body=falsetrue_body,
        make_batch=falsetrue_batch,
        baseline="benchmarks.baselines.falsetrue_seed:app",
    ),
)


def by_name(name: str) -> BenchPath:
    for path in PATHS:
        if path.name == name:
            return path
    raise KeyError(f"unknown benchmark path {name!r}; known: {[p.name for p in PATHS]}")


def encode(path: BenchPath, body: Body) -> bytes:
    """The bytes sent on the wire: JSON bodies are encoded once, before the clock starts."""
    import json

    return body if isinstance(body, bytes) else json.dumps(body).encode()
