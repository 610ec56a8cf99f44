"""Every load checks the stored artifact against the sha256 recorded when it was stored
(despliegue/artifacts.py): here the load a runner makes, on a real store, in a subprocess (the
model store is chosen by BENTOML_HOME when bentoml is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import LIFECYCLE_STATE_ENV, ROOT, lifecycle_state, run_save_models

pytestmark = pytest.mark.processes

LOAD = """
from despliegue.lifecycle.swap import ServedModels
served = ServedModels("heatflow").model("heatflow").served
print("loaded", served.tag, served.model.predict([[1000.0]])[0])
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "bentoml"
    result = run_save_models("reference", "heatflow_svr", home=str(home))
    assert result.returncode == 0, result.stderr
    return home


def load(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOAD],
        cwd=ROOT,
        # The home's own lifecycle state: the session's may pin a tag of the session's store.
        env={
            **os.environ,
            "BENTOML_HOME": str(home),
            LIFECYCLE_STATE_ENV: lifecycle_state(str(home)),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def artifact(home: Path) -> Path:
    (found,) = (home / "models" / "heatflow_svr").glob("*/model.joblib")
    return found


def test_an_intact_model_loads(home: Path) -> None:
    result = load(home)
    assert result.returncode == 0 and "loaded heatflow_svr:" in result.stdout, result.stderr


def test_a_flipped_byte_is_refused_naming_the_file(home: Path) -> None:
    path = artifact(home)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = load(home)
    assert result.returncode != 0
    assert "ModelUnusable" in result.stderr and str(path) in result.stderr
    assert "differs from" in result.stderr and "save_models.py" in result.stderr


def test_a_model_stored_without_a_sum_cannot_be_verified_and_is_refused(home: Path) -> None:
    info_file = artifact(home).parent / "model.yaml"
    info = yaml.safe_load(info_file.read_text(encoding="utf-8"))
    del info["metadata"]["artifact_sha256"]
    info_file.write_text(yaml.safe_dump(info), encoding="utf-8")
    result = load(home)
    assert result.returncode != 0
    assert "no sha256 was recorded" in result.stderr and "save_models.py reference" in result.stderr
