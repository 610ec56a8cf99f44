"""Batch scoring on Spark (local mode, two cores): the `mapInPandas` function answers a few
hundred items exactly as the in-process batch command does, refusals included.

Needs pyspark (requirements-dev.txt) and a Java runtime (`make test-tools` installs Debian's
openjdk-17-jre-headless); without either the test skips saying which."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from despliegue.batch.__main__ import main
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

ITEMS = 300


@pytest.fixture(scope="module")
def spark(reference_store: str) -> Iterator[Any]:
    reason = ""
    if shutil.which("java") is None:
        reason = "no Java runtime: scripts/test-tools.sh installs openjdk-17-jre-headless"
    elif importlib.util.find_spec("pyspark") is None:
        reason = "pyspark missing: it is pinned in requirements-dev.txt"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the Spark test: {reason}")
        pytest.skip(reason)
    from pyspark import sql as pyspark_sql

    # The Python workers Spark starts: this interpreter, with the checkout importable; they
    # inherit the session's model store and lifecycle state from the environment.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        session = (
            pyspark_sql.SparkSession.builder.master("local[2]")
            .appName("despliegue-batch-test")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .getOrCreate()
        )
        yield session
        session.stop()


def by_item(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    rows = frame.to_dict("records")
    clean = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]
    return {row["item"]: row for row in clean}


def test_spark_answers_equal_the_in_process_run(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from despliegue.batch.spark import score_partitions, spark_schema_of

    values = [float(i * 47) for i in range(ITEMS)]
    values[7], values[150] = -1.0, 20000.0  # refused by the API's schema: rows with the reason
    items = pd.DataFrame({"item": [str(i) for i in range(ITEMS)], "value": values})
    table = tmp_path / "wells.parquet"
    items.rename(columns={"value": "sediment_thickness_m"}).to_parquet(table)
    output = tmp_path / "in-process.parquet"
    assert main(["heatflow", str(table), "-o", str(output), "--no-progress"]) == 0
    capsys.readouterr()

    frame = spark.createDataFrame(items).repartition(4)
    scored = frame.mapInPandas(
        score_partitions("heatflow", batch_size=64), spark_schema_of("heatflow")
    )
    on_spark = by_item(scored.toPandas())
    assert len(on_spark) == ITEMS
    assert on_spark == by_item(pd.read_parquet(output))
    assert on_spark["7"]["error"] and on_spark["150"]["error"]
    assert on_spark["0"]["model_tag"].startswith("heatflow_svr:")
