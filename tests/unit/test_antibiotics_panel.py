"""The antibiotic panel's store side: name pattern, configuration, reference data, .keras import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from despliegue.config import DEFAULT_CONFIG_PATH, ConfigurationError, load_settings
from despliegue.families.antibiotics import generate_isolates
from despliegue.importing import ImportRefused, recipe_for
from tests.conftest import run_save_models
from tests.unit.test_config import write_config


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("modelo_AMK_NM", "AMK"),
        ("modelo_amk_nm", "AMK"),  # BentoML stores tag names in lower case
        ("modelo_CIP_NM", "CIP"),
        ("modelo__NM", None),
        ("modelo_A-B_NM", None),
        ("heatflow_svr", None),
    ],
)
def test_codes_come_from_the_configured_pattern(name: str, code: str | None) -> None:
    panel = load_settings(DEFAULT_CONFIG_PATH).panel("antibiotics")
    assert panel.code_of(name) == code
    assert panel.model_name("CIP") == "modelo_CIP_NM"


def test_recipes_match_by_name_or_by_pattern() -> None:
    assert recipe_for("modelo_CIP_NM").family == "antibiotics"
    assert recipe_for("heatflow_svr").family == "heatflow"
    assert recipe_for("falsetrue_classifier").family == "falsetrue"
    with pytest.raises(ImportRefused, match="modelo_<CODE>_NM"):
        recipe_for("modelo_CIP")


@pytest.mark.parametrize(
    ("mutate", "named_key"),
    [
        (lambda raw: raw["families"].pop("antibiotics"), "antibiotics"),
        (
            lambda raw: raw["families"]["antibiotics"].update(model_pattern="modelo_NM"),
            "families.antibiotics.model_pattern",
        ),
        (
            lambda raw: raw["families"]["antibiotics"].update(codes=["amk"]),
            "families.antibiotics.codes.0",
        ),
        (
            lambda raw: raw["families"]["antibiotics"].update(versions={"AMK": "v 1!"}),
            "families.antibiotics.versions",
        ),
        (
            lambda raw: raw["families"]["antibiotics"]["batching"].update(max_batch_size=0),
            "families.antibiotics.batching.max_batch_size",
        ),
    ],
)
def test_bad_panel_configuration_is_refused(tmp_path: Path, mutate, named_key: str) -> None:
    path = write_config(tmp_path, mutate)
    with pytest.raises(ConfigurationError, match=named_key.replace(".", r"\.")):
        load_settings(path)


def test_generated_isolates_are_imbalanced_and_reproducible() -> None:
    markers, labels = generate_isolates("AMK")
    rates = np.bincount(labels, minlength=3) / labels.size
    assert rates[0] > 0.5 and 0.05 < rates[1] < 0.2 and 0.15 < rates[2] < 0.3
    assert set(np.unique(markers)) == {0.0, 1.0}
    again, _ = generate_isolates("AMK")
    assert np.array_equal(markers, again)
    assert not np.array_equal(markers, generate_isolates("CAZ")[0])


@pytest.mark.processes
def test_keras_file_import_checks_labels_against_outputs(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    artifact = tmp_path / "cip.keras"
    model.save(artifact)
    home = tmp_path / "bentoml"
    refused = run_save_models(
        "import", "modelo_CIP_NM", str(artifact), "--classes", "S,R", home=str(home)
    )
    assert refused.returncode == 1
    assert "3 classes but the labels are ['S', 'R']" in refused.stderr.replace("\n", "")
    accepted = run_save_models("import", "modelo_CIP_NM", str(artifact), home=str(home))
    assert accepted.returncode == 0, accepted.stderr
    (stored,) = (home / "models" / "modelo_cip_nm").glob("*/model.yaml")
    metadata = yaml.safe_load(stored.read_text())["metadata"]
    assert metadata["input_length"] == 5 and metadata["classes"] == ["S", "I", "R"]
    assert metadata["preprocessing"] == {"kind": "none"} and metadata["code"] == "CIP"


@pytest.mark.processes
@pytest.mark.parametrize(
    ("limits", "named"),
    [
        (
            {"antibiotics": {"max_vectors": 256, "max_features": 4096}},
            "limits.antibiotics.max_features = 4096",
        ),
        ({"max_body_bytes": 100_000}, "limits.max_body_bytes = 100000"),
    ],
    ids=["max-features", "max-body-bytes"],
)
def test_import_refuses_a_model_no_request_could_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: dict, named: str
) -> None:
    """A 6,000-feature spectrum model under limits too small for one of its vectors: refused,
    naming the configuration key to raise; with the shipped limits it imports."""
    import keras

    model = keras.Sequential([keras.Input((6000,)), keras.layers.Dense(3, activation="softmax")])
    artifact = tmp_path / "spectra.keras"
    model.save(artifact)
    home = tmp_path / "bentoml"
    config = write_config(tmp_path, lambda raw: raw["limits"].update(limits))
    monkeypatch.setenv("DESPLIEGUE_CONFIG", str(config))
    refused = run_save_models("import", "modelo_MER_NM", str(artifact), home=str(home))
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1
    assert named in said and str(config) in said and "store is unchanged" in said
    assert not (home / "models" / "modelo_mer_nm").exists()

    monkeypatch.delenv("DESPLIEGUE_CONFIG")
    accepted = run_save_models("import", "modelo_MER_NM", str(artifact), home=str(home))
    assert accepted.returncode == 0, accepted.stderr
