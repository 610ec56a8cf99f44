"""save_models.py through its real command line, each test on its own empty model store."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn.base
import yaml
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeRegressor
from sklearn.tree._tree import Tree

from despliegue.artifacts import sha256_of
from tests.conftest import run_save_models

# The sklearn references build in seconds; the image families' references are built (and
# checked) once per session by the live server's fixture.
SKLEARN_REFERENCES = ("reference", "heatflow_svr", "falsetrue_classifier")


def stored(home: Path, name: str) -> list[dict]:
    """model.yaml of every stored version of `name`, read straight from the store folder."""
    folder = home / "models" / name
    if not folder.exists():
        return []
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*/model.yaml"))]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "bentoml"


def fitted_heatflow_model() -> LinearRegression:
    return LinearRegression().fit(np.array([[0.0], [5000.0]]), np.array([100.0, 50.0]))


@pytest.mark.processes
def test_a_configuration_mistake_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "configuration.yaml"
    config.write_text("families:\n  heatflow:\n    modle: heatflow_svr\n", encoding="utf-8")
    result = run_save_models("list", extra_env={"DESPLIEGUE_CONFIG": str(config)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"save_models.py: invalid configuration in {config}: ")
    assert "families.heatflow.modle: Extra inputs are not permitted" in result.stderr


@pytest.mark.processes
def test_reference_models_are_built_once_then_kept(home: Path) -> None:
    first = run_save_models(*SKLEARN_REFERENCES, home=str(home))
    assert first.returncode == 0, first.stderr
    assert "built" in first.stdout
    heatflow = stored(home, "heatflow_svr")
    assert len(heatflow) == 1 and len(stored(home, "falsetrue_classifier")) == 1
    metadata = heatflow[0]["metadata"]
    assert metadata["reference"] is True
    assert metadata["metrics_held_out"]["r2"] > 0.5
    thickness = metadata["baseline"]["inputs"]["sediment_thickness_m"]
    assert set(thickness) >= {"mean", "std", "quantiles", "edges", "counts"}
    assert metadata["baseline"]["source"] == "reference"
    # The sum every load checks, recorded for reference models as for imports.
    for name in ("heatflow_svr", "falsetrue_classifier"):
        (artifact,) = (home / "models" / name).glob("*/model.joblib")
        assert stored(home, name)[0]["metadata"]["artifact_sha256"] == sha256_of(artifact)

    second = run_save_models(*SKLEARN_REFERENCES, home=str(home))
    assert second.returncode == 0, second.stderr
    assert "Nothing to do" in second.stdout
    assert stored(home, "heatflow_svr") == heatflow


@pytest.mark.processes
def test_import_probes_then_stores_with_provenance(home: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "my_svr.joblib"
    joblib.dump(fitted_heatflow_model(), artifact)
    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    (model,) = stored(home, "heatflow_svr")
    assert model["metadata"]["reference"] is False
    assert model["metadata"]["source_file"] == "my_svr.joblib"
    assert model["metadata"]["sha256"] == sha256_of(artifact)
    assert model["metadata"]["artifact_sha256"] == sha256_of(artifact)  # stored byte for byte
    assert model["metadata"]["sklearn_version_pickled"] == sklearn.__version__
    assert "warning" not in result.stderr
    # The stored artifact is the user's file, byte for byte.
    version_dir = next((home / "models" / "heatflow_svr").glob("*/model.joblib"))
    assert version_dir.read_bytes() == artifact.read_bytes()
    # A reference build afterwards keeps the imported model.
    again = run_save_models(*SKLEARN_REFERENCES, home=str(home))
    assert len(stored(home, "heatflow_svr")) == 1, again.stderr


class NaNRegressor(DummyRegressor):
    def predict(self, X):
        return np.full(len(X), np.nan)


@pytest.mark.processes
@pytest.mark.parametrize(
    ("make_artifact", "reason"),
    [
        (lambda path: path.write_text("this is not a pickle"), "cannot be loaded"),
        (lambda path: joblib.dump({"weights": [1, 2]}, path), "has no predict"),
        (lambda path: joblib.dump(LinearRegression(), path), "probe call failed"),
        (lambda path: path.write_bytes(b""), "the file is empty (0 bytes)"),
    ],
    ids=["not-a-pickle", "no-predict", "unfitted", "empty"],
)
def test_failed_import_leaves_the_store_unchanged(
    home: Path, tmp_path: Path, make_artifact, reason: str
) -> None:
    run_save_models(*SKLEARN_REFERENCES, home=str(home))
    before = stored(home, "heatflow_svr")
    artifact = tmp_path / "broken.joblib"
    make_artifact(artifact)
    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert result.returncode == 1
    assert "broken.joblib" in result.stderr and reason in result.stderr
    assert "store is unchanged" in result.stderr
    assert stored(home, "heatflow_svr") == before


@pytest.mark.processes
def test_falsetrue_import_refuses_labels_other_than_0_and_1(home: Path, tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["uno dos", "tres cuatro", "cinco seis"]
    model = make_pipeline(CountVectorizer(), LogisticRegression()).fit(texts, [3, 4, 5])
    artifact = tmp_path / "three_classes.joblib"
    joblib.dump(model, artifact)
    result = run_save_models("import", "falsetrue_classifier", str(artifact), home=str(home))
    assert result.returncode == 1
    assert "must answer 0 or 1" in result.stderr
    assert stored(home, "falsetrue_classifier") == []


@pytest.mark.processes
def test_import_warns_when_pickled_with_another_scikit_learn(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "old.joblib"
    monkeypatch.setattr(sklearn.base, "__version__", "1.2.2")
    joblib.dump(fitted_heatflow_model(), artifact)
    monkeypatch.undo()
    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    assert "pickled with scikit-learn 1.2.2" in " ".join(result.stderr.split())
    (model,) = stored(home, "heatflow_svr")
    assert model["metadata"]["sklearn_version_pickled"] == "1.2.2"


@pytest.mark.processes
def test_unknown_model_name_and_missing_file_are_refused(home: Path, tmp_path: Path) -> None:
    unknown = run_save_models("import", "no_such_model", str(tmp_path / "x"), home=str(home))
    assert unknown.returncode == 1 and "unknown model name" in unknown.stderr
    missing = run_save_models(
        "import", "heatflow_svr", str(tmp_path / "absent.joblib"), home=str(home)
    )
    assert missing.returncode == 1 and "no such file" in missing.stderr


@pytest.mark.processes
def test_help_explains_the_commands() -> None:
    result = run_save_models("--help")
    assert result.returncode == 0
    for word in ("import", "list", "reference", "heatflow_svr"):
        assert word in result.stdout


class OldScikitLearnPickler(pickle.Pickler):
    """Writes a fitted tree as scikit-learn 0.24 pickled it: that version recorded in the
    estimator's state, and tree nodes without `missing_go_to_left` (added in 1.3). Loading
    such a file fails in scikit-learn today with a dump of the two numpy dtypes."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, Tree):
            rebuild, args, state = obj.__reduce__()
            nodes = state["nodes"]
            names = [name for name in nodes.dtype.names if name != "missing_go_to_left"]
            old_nodes = np.array(
                [tuple(row[name] for name in names) for row in nodes],
                dtype=[(name, nodes.dtype.fields[name][0]) for name in names],
            )
            return rebuild, args, {**state, "nodes": old_nodes}
        if isinstance(obj, DecisionTreeRegressor):
            rebuild, args, state = obj.__reduce__()[:3]
            return rebuild, args, {**state, "_sklearn_version": "0.24.2"}
        return NotImplemented


@pytest.mark.processes
def test_unloadable_old_pickle_names_both_versions_and_the_fix(home: Path, tmp_path: Path) -> None:
    model = DecisionTreeRegressor(max_depth=3).fit([[0.0], [3000.0], [9000.0]], [95, 70, 48])
    artifact = tmp_path / "model_2021.pkl"
    with artifact.open("wb") as handle:
        OldScikitLearnPickler(handle, protocol=4).dump(model)
    with pytest.raises(ValueError, match="incompatible dtype"):
        joblib.load(artifact)  # the file really is unloadable here

    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    said = " ".join(result.stderr.split())
    assert result.returncode == 1
    assert (
        f"pickled with scikit-learn 0.24.2 (recorded in the file), but {sklearn.__version__}"
        in said
    )
    assert f"train the model again with scikit-learn {sklearn.__version__}" in said
    assert "- expected:" not in said  # the dtype dump stays out of the message
    assert "store is unchanged" in said and stored(home, "heatflow_svr") == []


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("xz", 3)])
def test_pickled_version_is_read_without_unpickling(
    tmp_path: Path, protocol: int, compress: object
) -> None:
    from despliegue.importing import sklearn_version_in_pickle

    artifact = tmp_path / "model.joblib"
    joblib.dump(fitted_heatflow_model(), artifact, protocol=protocol, compress=compress)
    assert sklearn_version_in_pickle(artifact) == sklearn.__version__
    artifact.write_bytes(b"_sklearn_version but not a pickle")
    assert sklearn_version_in_pickle(artifact) is None


@pytest.mark.processes
def test_dataframe_fitted_pipeline_imports_and_is_probed_with_its_column(
    home: Path, tmp_path: Path
) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame({"espesor_m": [0.0, 2000.0, 6000.0, 9000.0]})
    model = make_pipeline(StandardScaler(), LinearRegression()).fit(frame, [95, 70, 52, 47])
    artifact = tmp_path / "named.joblib"
    joblib.dump(model, artifact)
    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    assert "feature names" not in result.stderr  # the probe called it with its own column

    two_columns = make_pipeline(StandardScaler(), LinearRegression()).fit(
        frame.assign(profundidad_m=[10.0, 20.0, 30.0, 40.0]), [95, 70, 52, 47]
    )
    joblib.dump(two_columns, artifact)
    refused = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1
    assert "fitted on 2 named columns (espesor_m, profundidad_m)" in said
    assert len(stored(home, "heatflow_svr")) == 1


@pytest.mark.processes
def test_list_shows_whole_tags_and_what_serves_in_a_narrow_terminal(
    home: Path, tmp_path: Path
) -> None:
    run_save_models(*SKLEARN_REFERENCES, home=str(home))
    artifact = tmp_path / "newer.joblib"
    joblib.dump(fitted_heatflow_model(), artifact)
    imported = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert imported.returncode == 0, imported.stderr
    said = " ".join(imported.stdout.split())
    assert re.search(r"heatflow_svr:\w+ is a candidate", said), "the stored tag is on stdout"
    listed = run_save_models("list", home=str(home), columns=40)
    assert listed.returncode == 0, listed.stderr
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in listed.stdout.splitlines()]
    serves = {row[0]: row[2] for row in cells if len(row) == 6}  # tag -> the "serves" column
    versions = sorted(stored(home, "heatflow_svr"), key=lambda model: model["creation_time"])
    older, newer = (f"heatflow_svr:{model['version']}" for model in versions)
    falsetrue = f"falsetrue_classifier:{stored(home, 'falsetrue_classifier')[0]['version']}"
    # Whole tags in a 40-column terminal; the import is a candidate: the reference model keeps
    # serving until it is promoted (despliegue/lifecycle/).
    assert serves[older] == "heatflow" and serves[newer] == "-", listed.stdout
    assert serves[falsetrue] == "falsetrue"
    assert "│" not in listed.stderr, "the table is on stdout"
    as_json = run_save_models("list", "--json", home=str(home))
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["tag"]: row for row in json.loads(as_json.stdout)}
    assert rows[older]["serves"] == "heatflow" and rows[newer]["serves"] == "-"
    assert rows[falsetrue]["family"] == "falsetrue" and rows[falsetrue]["reference"] == "True"


@pytest.mark.processes
def test_list_on_an_empty_store_says_how_to_fill_it(home: Path) -> None:
    listed = run_save_models("list", home=str(home))
    assert listed.returncode == 0
    text = " ".join(listed.stdout.split())
    assert "is empty" in text and "python save_models.py" in text and "import NAME FILE" in text


@pytest.mark.parametrize("document", ["README.md", "docs/models.md"])
def test_documented_import_commands_are_ones_the_command_line_takes(document: str) -> None:
    """Every `save_models.py` line the docs show parses with the real command line and names
    a model it knows: a renamed flag or preset cannot leave the docs behind."""
    import shlex

    from despliegue.importing import recipe_for
    from save_models import parse_args
    from tests.conftest import ROOT

    text = (ROOT / document).read_text()
    lines = [
        found[1]
        for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
        for found in re.finditer(r"(?:^|[\s/])save_models\.py (.*)", block, re.MULTILINE)
    ]
    assert any(line.startswith("import ") and "--preprocessing" in line for line in lines)
    for line in lines:
        args = parse_args(shlex.split(line, comments=True))
        if args.command == "import":
            recipe_for(args.model_name)  # raises ImportRefused for a name no family takes


@pytest.mark.processes
def test_import_with_baseline_data_stores_an_import_baseline(home: Path, tmp_path: Path) -> None:
    artifact, data = tmp_path / "svr.joblib", tmp_path / "thickness.csv"
    joblib.dump(fitted_heatflow_model(), artifact)
    values = np.random.default_rng(0).uniform(0, 8000, 40)
    data.write_text("sediment_thickness_m\n" + "\n".join(f"{v:.1f}" for v in values) + "\n")
    args = ("import", "heatflow_svr", str(artifact), "--baseline", str(data))
    result = run_save_models(*args, home=str(home))
    assert result.returncode == 0, result.stdout + result.stderr
    baseline = stored(home, "heatflow_svr")[0]["metadata"]["baseline"]
    assert baseline["source"] == "import" and baseline["count"] == 40
    thickness = baseline["inputs"]["sediment_thickness_m"]
    assert thickness["mean"] == pytest.approx(values.mean())
    assert baseline["outputs"]["heat_flow_mw_m2"]["count"] == 40


@pytest.mark.processes
def test_import_with_unusable_baseline_data_is_refused(home: Path, tmp_path: Path) -> None:
    artifact, texts = tmp_path / "svr.joblib", tmp_path / "three.txt"
    joblib.dump(fitted_heatflow_model(), artifact)
    texts.write_text("1\n2\n3\n")
    result = run_save_models(
        "import", "heatflow_svr", str(artifact), "--baseline", str(texts), home=str(home)
    )
    assert result.returncode == 1
    said = " ".join((result.stdout + result.stderr).split())
    assert "3 items; a baseline needs at least 10" in said
    assert stored(home, "heatflow_svr") == []


def test_blazeface_is_built_only_when_named_or_configured(monkeypatch) -> None:
    """The default reference set downloads nothing: BlazeFace (a wheel from PyPI) joins it when
    named on the command line or when configuration serves it."""
    import save_models
    from despliegue.config import settings

    def names(selection: list[str]) -> set[str]:
        return {name for _, name in save_models.reference_targets(selection)}

    assert "face_detector_blazeface" not in names([])
    assert "face_detector" in names([])
    assert names(["face_detector_blazeface"]) == {"face_detector_blazeface"}
    assert names(["face_detector"]) == {"face_detector"}
    families = dict(settings().families)
    families["face_detector"] = families["face_detector"].model_copy(
        update={"model": "face_detector_blazeface"}
    )
    configured = settings().model_copy(update={"families": families})
    monkeypatch.setattr(save_models, "settings", lambda: configured)
    assert {"face_detector", "face_detector_blazeface"} <= names([])
