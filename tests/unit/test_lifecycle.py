"""Candidates vs served: save_models.py promote / rollback / canary / shadow / history through
the real command line, on a model store and a lifecycle state file of the test's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from sklearn.dummy import DummyRegressor

from despliegue.config import DEFAULT_CONFIG_PATH, ConfigurationError, load_settings
from tests.conftest import LIFECYCLE_STATE_ENV, ROOT, private_home, run_save_models

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


@pytest.mark.processes
def test_import_promote_rollback_canary_shadow_history(store: Store, tmp_path: Path) -> None:
    """One walk through the commands (each is a process of its own: a few, not many)."""
    (v1,) = store.tags("heatflow_svr")
    v2 = store.import_constant(tmp_path, 123.0)
    # Configuration says `version: latest`: without the pin, v2 would be served at next start.
    assert store.families()["heatflow"] == {"served": v1}
    pin = store.history()[-1]
    assert (pin["action"], pin["to"], pin["who"]) == ("pin", v1, OPERATOR)

    promoted = store.run("promote", "heatflow", v2, "--why", "lower error on the 2026 survey")
    assert promoted.returncode == 0, promoted.stderr
    assert v2 in promoted.stdout and "Recorded in" in promoted.stdout
    assert store.families()["heatflow"] == {"served": v2, "previous": v1}
    line = store.history()[-1]
    assert line["action"] == "promote" and (line["from"], line["to"]) == (v1, v2)
    assert line["why"] == "lower error on the 2026 survey" and line["who"] == OPERATOR
    assert line["at"].endswith("+00:00")

    rolled = store.run("rollback", "heatflow", "--why", "complaints")
    assert rolled.returncode == 0, rolled.stderr
    assert store.families()["heatflow"] == {"served": v1, "previous": v2}

    assert store.run("canary", "heatflow", v2, "20", "--why", "try it").returncode == 0
    assert store.families()["heatflow"]["canary"] == {"tag": v2, "percent": 20.0}
    assert store.run("shadow", "heatflow", v2, "--why", "compare").returncode == 0
    assert store.families()["heatflow"]["shadow"] == v2
    actions = [(e["action"], e["to"]) for e in store.history()]
    assert actions == [
        ("pin", v1),
        ("promote", v2),
        ("rollback", v1),
        ("canary", f"{v2} 20%"),
        ("shadow", v2),
    ]

    # `bentoml build` packs the runner class's models: served, previous, canary, shadow.
    script = (
        "from runners.heatflow import HeatFlowRegressor;"
        "print(sorted(str(m.tag) for m in HeatFlowRegressor.models))"
    )
    env = {"BENTOML_HOME": store.home, **store.env, "PATH": str(Path(sys.executable).parent)}
    listed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == str(sorted([v1, v2]))

    shown = store.run("history", "heatflow")
    assert shown.returncode == 0 and "complaints" in shown.stdout and "compare" in shown.stdout
    assert "complaints" not in shown.stderr, "the answer is on stdout (`| grep` finds it)"
    as_json = store.run("history", "heatflow", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [e for e in store.history() if e["family"] == "heatflow"]


@pytest.fixture
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DESPLIEGUE_LIFECYCLE_STATE", str(tmp_path / "served.json"))
    return tmp_path / "served.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("promote", "heatflow", "heatflow_svr:nosuchversion"), "not in the model store"),
        (("promote", "falsetrue", "heatflow_svr:v1"), "not a model of falsetrue"),
        (("promote", "nosuchfamily", "heatflow_svr:v1"), "unknown family"),
        (("promote", "antibiotics", "heatflow_svr:v1"), "is a panel"),
        (("rollback", "heatflow"), "no previous tag"),
        (("set_canary", "heatflow", "heatflow_svr:v1", 150), "between 0 and 100"),
        (("set_shadow", "flowers", "heatflow_svr:v1"), "not a model of flowers"),
    ],
)
def test_refusals_name_the_problem_and_change_nothing(
    state_file: Path, change: tuple, message: str
) -> None:
    from despliegue.lifecycle import commands, state

    command, *args = change
    with pytest.raises(state.LifecycleRefused, match=message):
        getattr(commands, command)(*args, why="test")
    assert not state_file.exists() and not state.history_path().exists()


def test_every_change_needs_a_reason() -> None:
    from save_models import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(["promote", "heatflow", "heatflow_svr:v1"])
    assert refused.value.code == 2
    assert parse_args(["promote", "heatflow", "heatflow_svr:v1", "--why", "w"]).why == "w"


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
    from despliegue.lifecycle.comparisons import comparisons

    compare = comparisons()
    assert compare["heatflow"](100.0, 102.0) == (True, 2.0)
    assert compare["heatflow"](100.0, 150.0)[0] is False
    same, difference = compare["falsetrue"](np.array([1.0, 0.9]), np.array([1.0, 0.7]))
    assert same and difference == pytest.approx(0.2)
    assert compare["flowers"](np.array([0.7, 0.3]), np.array([0.2, 0.8]))[0] is False
    assert compare["face_detector"](np.zeros((2, 15)), np.zeros((1, 15))) == (False, 1.0)


# --- where the state lives: beside the store it names -------------------------------------


def test_the_state_defaults_to_the_home_and_inside_a_bento_to_the_packed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from despliegue.lifecycle import state

    monkeypatch.delenv(state.STATE_ENV)
    home = Path(os.environ["BENTOML_HOME"])
    assert state.state_path() == home / "served.json"
    assert state.history_path() == home / "served-history.jsonl"
    assert state.bento_source() is None  # a checkout

    bento = tmp_path / "bento"
    (bento / "src").mkdir(parents=True)
    monkeypatch.setattr(state, "PROJECT_ROOT", bento / "src")
    assert state.state_path() == home / "served.json", "a src folder alone is not a Bento"
    (bento / "bento.yaml").write_text("service: service:Despliegue\n")
    assert state.state_path() == bento / "src" / "served.json"

    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "elsewhere.json"))
    assert state.state_path() == tmp_path / "elsewhere.json"
    assert state.history_path() == tmp_path / "elsewhere-history.jsonl"


def test_packing_copies_the_state_for_the_build_only(state_file: Path, tmp_path: Path) -> None:
    from despliegue.lifecycle import state

    context = tmp_path / "context"
    context.mkdir()
    with state.pack_for_build(context) as packed:
        assert packed == []  # nothing promoted: the Bento serves what configuration names
    state_file.write_text('{"families": {"heatflow": {"served": "heatflow_svr:v2"}}}\n')
    state.history_path().write_text('{"action": "promote"}\n')

    failing = pytest.raises(RuntimeError, match="the build failed")
    with failing, state.pack_for_build(context) as packed:
        assert (context / "served.json").read_text() == state_file.read_text()
        assert (context / "served-history.jsonl").read_text() == '{"action": "promote"}\n'
        raise RuntimeError("the build failed")
    assert sorted(p.name for p in context.iterdir()) == []

    # A file the old default left in the project folder is neither packed nor overwritten.
    (context / "served.json").write_text("{}")
    refused = pytest.raises(state.LifecycleRefused, match="no longer read outside a Bento")
    with refused, state.pack_for_build(context):
        pytest.fail("built with a stale state")
    assert (context / "served.json").read_text() == "{}"


def save_models_on(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    """save_models.py as a user runs it: BENTOML_HOME set, no DESPLIEGUE_LIFECYCLE_STATE."""
    env = {k: v for k, v in os.environ.items() if k != LIFECYCLE_STATE_ENV}
    env.update(BENTOML_HOME=home, COLUMNS="300", DESPLIEGUE_OPERATOR=OPERATOR)
    return subprocess.run(
        [sys.executable, "save_models.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def state_files_in_checkout() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in ROOT.glob("*served*")}


@pytest.mark.processes
def test_two_homes_from_one_checkout_never_mix_their_states(
    reference_store: str, tmp_path: Path
) -> None:
    checkout_before = state_files_in_checkout()
    homes = {value: private_home(reference_store, tmp_path / f"{value:g}") for value in (1.0, 2.0)}
    promoted = {}
    for value, home in homes.items():
        artifact = tmp_path / f"constant_{value:g}.joblib"
        joblib.dump(
            DummyRegressor(strategy="constant", constant=value).fit([[0.0]], [value]), artifact
        )
        imported = save_models_on(home, "import", "heatflow_svr", str(artifact))
        assert imported.returncode == 0, imported.stderr
        tag = re.search(r"(heatflow_svr:\w+) is a candidate", " ".join(imported.stdout.split()))[1]
        done = save_models_on(home, "promote", "heatflow", tag, "--why", f"home {value:g}")
        assert done.returncode == 0, done.stderr
        promoted[home] = tag

    for home, tag in promoted.items():
        state_file = Path(home) / "served.json"
        families = json.loads(state_file.read_text())["families"]
        assert families["heatflow"]["served"] == tag
        named = {
            t
            for entry in families.values()
            for t in (entry.get("served"), entry.get("previous"), entry.get("shadow"))
            if t
        }
        for name, version in (t.split(":") for t in named):
            assert (Path(home) / "models" / name / version / "model.yaml").is_file(), (home, named)
        other = next(t for h, t in promoted.items() if h != home)
        assert other not in state_file.read_text()
        assert (Path(home) / "served-history.jsonl").is_file()

        listed = save_models_on(home, "list")
        assert listed.returncode == 0, listed.stderr
        rows = {
            cells[0]: cells[2]
            for line in listed.stdout.splitlines()
            if len(cells := [c.strip() for c in line.split("│")[1:-1]]) > 2
        }
        assert rows[tag] == "heatflow" and other not in rows, listed.stdout
        assert str(state_file) in listed.stdout, listed.stdout
    assert state_files_in_checkout() == checkout_before, "the checkout's state was written"
