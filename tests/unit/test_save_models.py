"""save_models.py through its real command line, each test on its own empty model store."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn.base
import yaml
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression

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


def test_reference_models_are_built_once_then_kept(home: Path) -> None:
    first = run_save_models(*SKLEARN_REFERENCES, home=str(home))
    assert first.returncode == 0, first.stderr
    assert "built" in first.stderr
    heatflow = stored(home, "heatflow_svr")
    assert len(heatflow) == 1 and len(stored(home, "falsetrue_classifier")) == 1
    metadata = heatflow[0]["metadata"]
    assert metadata["reference"] is True
    assert metadata["metrics_held_out"]["r2"] > 0.5
    assert set(metadata["baseline"]["sediment_thickness_m"]) >= {"mean", "std", "quantiles"}

    second = run_save_models(*SKLEARN_REFERENCES, home=str(home))
    assert second.returncode == 0, second.stderr
    assert "Nothing to do" in second.stderr
    assert stored(home, "heatflow_svr") == heatflow


def test_import_probes_then_stores_with_provenance(home: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "my_svr.joblib"
    joblib.dump(fitted_heatflow_model(), artifact)
    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert result.returncode == 0, result.stderr
    (model,) = stored(home, "heatflow_svr")
    assert model["metadata"]["reference"] is False
    assert model["metadata"]["source_file"] == "my_svr.joblib"
    from despliegue.artifacts import sha256_of

    assert model["metadata"]["sha256"] == sha256_of(artifact)
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


@pytest.mark.parametrize(
    ("make_artifact", "reason"),
    [
        (lambda path: path.write_text("this is not a pickle"), "cannot be loaded"),
        (lambda path: joblib.dump({"weights": [1, 2]}, path), "has no predict"),
        (lambda path: joblib.dump(LinearRegression(), path), "probe call failed"),
    ],
    ids=["not-a-pickle", "no-predict", "unfitted"],
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


def test_unknown_model_name_and_missing_file_are_refused(home: Path, tmp_path: Path) -> None:
    unknown = run_save_models("import", "no_such_model", str(tmp_path / "x"), home=str(home))
    assert unknown.returncode == 1 and "unknown model name" in unknown.stderr
    missing = run_save_models(
        "import", "heatflow_svr", str(tmp_path / "absent.joblib"), home=str(home)
    )
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_help_explains_the_commands() -> None:
    result = run_save_models("--help")
    assert result.returncode == 0
    for word in ("import", "list", "reference", "heatflow_svr"):
        assert word in result.stdout


def test_list_shows_whole_tags_and_what_serves_in_a_narrow_terminal(
    home: Path, tmp_path: Path
) -> None:
    run_save_models(*SKLEARN_REFERENCES, home=str(home))
    artifact = tmp_path / "newer.joblib"
    joblib.dump(fitted_heatflow_model(), artifact)
    assert run_save_models("import", "heatflow_svr", str(artifact), home=str(home)).returncode == 0
    listed = run_save_models("list", home=str(home), columns=40)
    assert listed.returncode == 0, listed.stderr
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in listed.stderr.splitlines()]
    serves = {row[0]: row[2] for row in cells if len(row) == 5}  # tag -> the "serves" column
    versions = sorted(stored(home, "heatflow_svr"), key=lambda model: model["creation_time"])
    older, newer = (f"heatflow_svr:{model['version']}" for model in versions)
    falsetrue = f"falsetrue_classifier:{stored(home, 'falsetrue_classifier')[0]['version']}"
    # Whole tags in a 40-column terminal; configuration.yaml serves `latest`: the import, not
    # the reference model it replaced.
    assert serves[newer] == "heatflow" and serves[older] == "-", listed.stderr
    assert serves[falsetrue] == "falsetrue"


def test_list_on_an_empty_store_says_how_to_fill_it(home: Path) -> None:
    listed = run_save_models("list", home=str(home))
    assert listed.returncode == 0
    text = " ".join(listed.stderr.split())
    assert "is empty" in text and "python save_models.py" in text and "import NAME FILE" in text


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
