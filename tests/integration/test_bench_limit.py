"""`make bench`'s first step on the real reference store: each path's one-core limit, and the
answers of the service's runner called in-process that every peer's answers are checked against
(benchmarks/limit.py). When a runner's return type changed, this step broke the whole benchmark
before any load was sent; it is cheap for the scikit-learn and panel paths, so it runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.paths import by_name
from benchmarks.peers.models import REQUEST_FIELD

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["heatflow", "falsetrue", "antibiotics"])
def test_limit_gives_a_rate_and_numeric_answers_per_item(reference_store: str, name: str) -> None:
    env = {
        **os.environ,
        "BENTOML_HOME": reference_store,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.limit", "--path", name, "--seconds", "0.5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    limit = json.loads(completed.stdout)
    assert limit["best_items_per_s"] > 0
    assert limit["check"], "no answer checks: the peers would be measured unchecked"
    path = by_name(name)
    for check in limit["check"]:
        items = check["body"][REQUEST_FIELD[path.name]]
        answers = check["answers"]
        assert len(answers) == len(items)
        flat = json.dumps(answers)
        assert '"' not in flat, f"an answer holds text, not numbers: {flat[:200]}"
