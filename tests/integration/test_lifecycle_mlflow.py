"""`save_models.py sync` against a live MLflow tracking server (sqlite backend store): the panel
follows `models:/modelo_<CODE>_NM@champion`, importing each version once and promoting it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_save_models
from tests.integration.conftest import Registry
from tests.integration.test_mlflow_panel import NAME, register_version

pytestmark = pytest.mark.integration
pytest.importorskip("mlflow", reason="MLflow extra not installed (requirements-mlflow.txt)")


def following_config(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    raw["families"]["antibiotics"]["mlflow_alias"] = "champion"
    path = folder / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sync_imports_and_promotes_what_the_alias_names(registry: Registry, tmp_path: Path) -> None:
    home = str(tmp_path / "bentoml")
    env = {"DESPLIEGUE_CONFIG": str(following_config(tmp_path)), "DESPLIEGUE_OPERATOR": "cron"}

    def sync() -> str:
        result = run_save_models("sync", home=home, extra_env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return " ".join(result.stdout.split())

    def served() -> dict:
        return json.loads((tmp_path / "served.json").read_text())["families"]["antibiotics.CIP"]

    first = register_version(bias=2, alias="champion")
    assert "promoted" in sync()
    v1 = served()["served"]
    (stored,) = (Path(home) / "models" / "modelo_cip_nm").glob("*/model.yaml")
    labels = yaml.safe_load(stored.read_text())["labels"]
    assert labels["mlflow_version"] == first and f"modelo_cip_nm:{stored.parent.name}" == v1

    assert "already served" in sync()  # nothing new: no second import, no history line
    assert len(list((Path(home) / "models" / "modelo_cip_nm").glob("*/model.yaml"))) == 1

    second = register_version(bias=0, alias="champion")
    assert "promoted" in sync()
    assert served()["previous"] == v1 and served()["served"] != v1
    lines = (tmp_path / "served-history.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["why"] == f"sync: models:/{NAME}@champion is version {second}"
    assert (last["who"], last["from"], last["to"]) == ("cron", v1, served()["served"])
