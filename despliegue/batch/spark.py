"""Batch scoring past one machine: the same batch code on Spark, as a `mapInPandas` function.

`bentoml.batch.run_in_spark` (bentoml 1.4.39) cannot run our APIs: it converts each Arrow
batch through the API's IO descriptors (`api.input.from_arrow`, `api.output.to_arrow`,
`api.output.spark_schema()`), which only the legacy `bentoml.Service` APIs have; an API of a
`@bentoml.service` class has pydantic schemas instead, and no such methods. Instead each
Python worker creates the family's runner in process once (kept while Spark reuses the worker)
and answers its partitions with the same `prepare` / `answer` as `python -m despliegue.batch`:

    from despliegue.batch.spark import score_partitions, spark_schema_of
    items = spark.read.parquet("thicknesses.parquet").selectExpr(
        "cast(id as string) as item", "sediment_thickness_m as value")
    scored = items.mapInPandas(score_partitions("heatflow"), spark_schema_of("heatflow"))

Input rows: `item` (a name) and `value` (what the family reads: a number, a text, a vector, or
an image's path readable by every executor). Output rows: the batch output's columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pandas as pd

from despliegue.batch.families import columns_of, spark_schema
from despliegue.batch.scoring import answered, batches, best_batch, load_runner, prepare, scorer_of


@cache
def _runner(family: str, model: str | None) -> Any:
    """One runner per Python worker and model: loading a model costs seconds."""
    return load_runner(family, model)


def spark_schema_of(family: str) -> str:
    return spark_schema(scorer_of(family))


def score_partitions(
    family: str, model: str | None = None, batch_size: int | None = None, top_k: int = 3
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for `DataFrame.mapInPandas` that scores (item, value) rows of `family`."""
    scorer = scorer_of(family)
    size = batch_size or best_batch(family)
    columns = list(columns_of(scorer))
    # pandas 3 keeps text as Arrow-backed strings, which pyspark 4.3 cannot convert back.
    texts = {name: object for name in columns if name not in scorer.columns}
    texts |= {name: object for name, kind in scorer.columns.items() if kind == "string"}

    def score(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from concurrent.futures import ThreadPoolExecutor

        runner = _runner(family, model)
        with ThreadPoolExecutor(1) as pool:  # Spark runs a worker per core already
            for frame in frames:
                items = zip(frame["item"].astype(str), frame["value"], strict=True)
                for batch in batches(items, size):
                    prepared = prepare(scorer, runner, batch, pool)
                    rows = answered(scorer, runner, prepared, {"top_k": top_k})
                    yield pd.DataFrame(rows, columns=columns).astype(texts)

    return score
