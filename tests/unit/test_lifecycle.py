"""Candidates vs served: save_models.py promote / rollback / canary / shadow / history through
the real command line, on a model store and a lifecycle state file of the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from sklearn.dummy import DummyRegressor

from despliegue.config import DEFAULT_CONFIG_PATH, ConfigurationError, load_settings
from tests.conftest import ROOT, run_save_models

OPERATOR = "test-operator@lifecycle"


class Store:
    """A model store with the reference heat flow model, and its lifecycle state file."""

    def __init__(self, folder: Path) -> None:
        self.home = str(folder / "bentoml")
        self.state = folder / "served.json"
        self.env = {"DESPLIEGUE_LIFECYCLE_STATE": str(self.state), "DESPLIEGUE_OPERATOR": OPERATOR}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_save_models(*args, home=self.home, extra_env=self.env)

    def families(self) -> dict:
        return json.loads(self.state.read_text())["families"]

    def history(self) -> list[dict]:
        lines = (self.state.parent / "served-history.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def tags(self, name: str) -> list[str]:
        folder = Path(self.home) / "models" / name
        return sorted(f"{name}:{p.parent.name}" for p in folder.glob("*/model.yaml"))

    def import_constant(self, folder: Path, value: float) -> str:
        """Import a heat flow model answering `value` everywhere; returns its tag."""
        artifact = folder / f"constant_{value:g}.joblib"
        joblib.dump(
            DummyRegressor(strategy="constant", constant=value).fit([[0.0]], [value]), artifact
        )
        before = set(self.tags("heatflow_svr"))
        result = self.run("import", "heatflow_svr", str(artifact))
        assert result.returncode == 0, result.stderr
        (tag,) = set(self.tags("heatflow_svr")) - before
        return tag


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    built = store.run("reference", "heatflow_svr")
    assert built.returncode == 0, built.stderr
    return store


def test_an_import_is_a_candidate_until_promoted(store: Store, tmp_path: Path) -> None:
    (v1,) = store.tags("heatflow_svr")
    v2 = store.import_constant(tmp_path, 123.0)
    # Configuration says `version: latest`: without the pin, v2 would be served at next start.
    assert store.families()["heatflow"] == {"served": v1}
    pin = store.history()[-1]
    assert (pin["action"], pin["to"], pin["who"]) == ("pin", v1, OPERATOR)
    serves = {  # the `list` table's columns: tag, family, serves, ...
        cells[1]: cells[3]
        for line in store.run("list").stderr.splitlines()
        if len(cells := [cell.strip() for cell in line.split("│")]) > 3
    }
    assert (serves[v1], serves[v2]) == ("heatflow", "-")

    promoted = store.run("promote", "heatflow", v2, "--why", "lower error on the 2026 survey")
    assert promoted.returncode == 0, promoted.stderr
    assert store.families()["heatflow"] == {"served": v2, "previous": v1}
    line = store.history()[-1]
    assert line["action"] == "promote" and (line["from"], line["to"]) == (v1, v2)
    assert line["why"] == "lower error on the 2026 survey" and line["who"] == OPERATOR
    assert line["at"].endswith("+00:00")

    rolled = store.run("rollback", "heatflow", "--why", "complaints")
    assert rolled.returncode == 0, rolled.stderr
    assert store.families()["heatflow"] == {"served": v1, "previous": v2}
    assert [e["action"] for e in store.history()] == ["pin", "promote", "rollback"]

    shown = store.run("history", "heatflow")
    assert shown.returncode == 0 and "complaints" in shown.stderr and v2 in shown.stderr


def test_refusals_name_the_problem_and_change_nothing(store: Store, tmp_path: Path) -> None:
    (v1,) = store.tags("heatflow_svr")
    cases = [
        (("promote", "heatflow", "heatflow_svr:nosuchversion"), "not in the model store"),
        (("promote", "falsetrue", v1), "not a model of falsetrue"),
        (("promote", "nosuchfamily", v1), "unknown family"),
        (("rollback", "heatflow"), "no previous tag"),
        (("canary", "heatflow", v1, "150"), "between 0 and 100"),
        (("promote", "antibiotics", v1), "is a panel"),
    ]
    for args, message in cases:
        result = store.run(*args, "--why", "test")
        assert result.returncode == 1, (args, result.stderr)
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
    assert not store.state.exists()
    missing_why = store.run("promote", "heatflow", v1)
    assert missing_why.returncode == 2 and "--why" in missing_why.stderr


def test_canary_and_shadow_are_recorded_and_ended(store: Store, tmp_path: Path) -> None:
    v2 = store.import_constant(tmp_path, 50.0)
    assert store.run("canary", "heatflow", v2, "20", "--why", "try it").returncode == 0
    assert store.families()["heatflow"]["canary"] == {"tag": v2, "percent": 20.0}
    assert store.run("shadow", "heatflow", v2, "--why", "compare").returncode == 0
    assert store.families()["heatflow"]["shadow"] == v2
    assert store.run("canary", "heatflow", v2, "0", "--why", "enough").returncode == 0
    assert store.run("shadow", "heatflow", "--why", "enough").returncode == 0
    entry = store.families()["heatflow"]
    # Present and null: the state file overrides a canary or shadow in configuration.yaml.
    assert entry["canary"] is None and entry["shadow"] is None
    actions = [(e["action"], e["to"]) for e in store.history()]
    assert actions[-4:] == [
        ("canary", f"{v2} 20%"),
        ("shadow", v2),
        ("canary", None),
        ("shadow", None),
    ]
    # Promoting the canary's tag ends the canary: it is the served model now.
    assert store.run("canary", "heatflow", v2, "10", "--why", "again").returncode == 0
    assert store.run("promote", "heatflow", v2, "--why", "good").returncode == 0
    assert store.families()["heatflow"]["canary"] is None


def test_the_bento_packs_served_canary_and_previous_tags(store: Store, tmp_path: Path) -> None:
    """What `bentoml build` packs is the runner class's models: they follow the state file."""
    (v1,) = store.tags("heatflow_svr")
    v2 = store.import_constant(tmp_path, 10.0)
    v3 = store.import_constant(tmp_path, 20.0)
    assert store.run("promote", "heatflow", v2, "--why", "w").returncode == 0
    assert store.run("canary", "heatflow", v3, "5", "--why", "w").returncode == 0
    script = (
        "from runners.heatflow import HeatFlowRegressor;"
        "print(sorted(str(m.tag) for m in HeatFlowRegressor.models))"
    )
    env = {"BENTOML_HOME": store.home, **store.env, "PATH": str(Path(sys.executable).parent)}
    listed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert eval(listed.stdout.strip()) == sorted([v1, v2, v3])


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"tag": "heatflow_svr:v2", "percent": 120}, "less than or equal to 100"),
        ({"tag": "not a tag", "percent": 10}, "should match pattern"),
        ({"percent": 10}, "Field required"),
    ],
)
def test_a_bad_canary_in_configuration_is_refused_naming_the_key(
    tmp_path: Path, canary: dict, message: str
) -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["families"]["heatflow"]["canary"] = canary
    path = tmp_path / "configuration.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigurationError, match=r"families\.heatflow\.canary") as refused:
        load_settings(path)
    assert message in str(refused.value)


def test_shadow_comparisons_per_family() -> None:
    from despliegue.lifecycle import FAMILIES

    assert FAMILIES["heatflow"].compare(100.0, 102.0) == (True, 2.0)
    assert FAMILIES["heatflow"].compare(100.0, 150.0)[0] is False
    same, difference = FAMILIES["falsetrue"].compare(np.array([1.0, 0.9]), np.array([1.0, 0.7]))
    assert same and difference == pytest.approx(0.2)
    assert FAMILIES["flowers"].compare(np.array([0.7, 0.3]), np.array([0.2, 0.8]))[0] is False
    assert FAMILIES["face_detector"].compare(np.zeros((2, 15)), np.zeros((1, 15))) == (False, 1.0)
