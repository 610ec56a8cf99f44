"""The family registry: every entry is whole, and what is derived from it is derived.

A family missing a part (runner, method, recipe, describe) fails here, naming the part; the
configuration refuses families and BentoML service names the registry does not know, naming the
ones it does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from despliegue import registry
from despliegue.config import ConfigurationError, load_settings
from despliegue.families import RECIPES
from despliegue.registry import FAMILIES, Family
from tests.unit.test_config import write_config

HEATFLOW = FAMILIES[0].models[0]


def test_every_entry_names_parts_that_exist_and_fit() -> None:
    registry.check()


def test_recipes_are_the_registry_models() -> None:
    assert list(RECIPES) == list(registry.model_keys())
    assert all(RECIPES[key].family == key for key in RECIPES)


def test_service_names_are_the_runner_classes() -> None:
    assert registry.service_names() == (
        "Despliegue",
        "HeatFlowRegressor",
        "FalseTrueClassifier",
        "FlowerClassifier",
        "FaceAnalyzer",
        "AntibioticPanel",
    )
    assert registry.family_of("face_validator").name == "faces"


def heatflow(**changes: object) -> Family:
    """The heat flow entry with some of its parts changed (checked as it is made)."""
    return replace(FAMILIES[0], **changes)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"name": "heat flow"}, "'heat flow' must be a Python identifier"),
        ({"models": ()}, "serves no model"),
        ({"runner": "runners.heatflow"}, "runner 'runners.heatflow' is not"),
        (
            {"models": (replace(HEATFLOW, recipe="despliegue.families.heatflow"),)},
            "heatflow.*is not",
        ),
        ({"models": (replace(HEATFLOW, method=""),)}, "a key and a method"),
        ({"paths": ()}, "needs its paths and a summary"),
        ({"summary": ""}, "needs its paths and a summary"),
    ],
)
def test_an_entry_missing_a_part_is_refused_when_written(changes: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        heatflow(**changes)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"runner": "runners.heatflow:NoSuchRunner"}, "NoSuchRunner"),
        ({"runner": "runners.no_such_module:Runner"}, "no_such_module"),
        ({"runner": "despliegue.registry:Model"}, "not a @bentoml.service"),
        ({"models": (replace(HEATFLOW, method="classify"),)}, "no API method 'classify'"),
        (
            {"models": (replace(HEATFLOW, recipe="despliegue.families.flowers:RECIPE"),)},
            "not the Recipe of family 'heatflow'",
        ),
        (
            {"models": (replace(HEATFLOW, recipe="despliegue.families.heatflow:NO_RECIPE"),)},
            "NO_RECIPE",
        ),
    ],
)
def test_an_entry_whose_parts_do_not_fit_fails_the_check(changes: dict, named: str) -> None:
    registry.check((heatflow(),))  # the entry as shipped passes
    with pytest.raises(ValueError, match=named):
        registry.check((heatflow(**changes),))


def test_repeated_names_fail_the_check() -> None:
    with pytest.raises(ValueError, match="repeated: \\['heatflow'\\]"):
        registry.check((FAMILIES[0], FAMILIES[0]))


def test_a_runner_without_describe_fails_the_check() -> None:
    import bentoml

    @bentoml.service
    class Silent:
        @bentoml.api
        def predict(self, values: list[float]) -> list[float]:
            return values

    import sys

    module = sys.modules[__name__]
    module.Silent = Silent  # type: ignore[attr-defined]
    family = heatflow(runner=f"{__name__}:Silent")
    with pytest.raises(ValueError, match="needs a `describe` API method"):
        registry.check((family,))


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (
            lambda raw: raw["bentoml"]["services"].update(HeatflowRegressor={"workers": 2}),
            "unknown services \\['HeatflowRegressor'\\]; the services are: Despliegue, "
            "HeatFlowRegressor, FalseTrueClassifier",
        ),
        (
            lambda raw: raw["families"].update(flowers2=raw["families"]["flowers"]),
            "unknown families \\['flowers2'\\]; the families are: heatflow, falsetrue",
        ),
        (
            lambda raw: raw["families"].pop("face_validator"),
            "missing families: \\['face_validator'\\]",
        ),
        (
            lambda raw: raw["families"]["face_detector"].pop("threshold"),
            "families \\['face_detector'\\] need a threshold",
        ),
        (
            lambda raw: raw["families"].update(antibiotics=raw["families"]["heatflow"]),
            "families.antibiotics needs model_pattern",
        ),
        (
            lambda raw: raw["families"].update(heatflow=raw["families"]["antibiotics"]),
            "families.heatflow names one model",
        ),
    ],
)
def test_configuration_holds_exactly_the_registry(tmp_path: Path, mutate, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        load_settings(write_config(tmp_path, mutate))


def test_the_api_service_depends_on_every_runner_of_the_registry() -> None:
    """service.py derives its runner attributes from the registry: none is forgotten."""
    import service

    dependencies = service.Despliegue.dependencies
    assert set(dependencies) == {family.name for family in FAMILIES}
    assert {name: dep.on.name for name, dep in dependencies.items()} == {
        family.name: family.service_name for family in FAMILIES
    }
    assert set(service.THRESHOLDS) == {"flowers", "face_detector", "face_validator"}


def test_merged_items_reach_each_runner_method_as_it_declares_them() -> None:
    import numpy as np

    import service

    declared = {
        f"{family.service_name}.{model.method}": service.as_declared(
            family.runner_class(), model.method
        )
        for family in FAMILIES
        for model in family.models
    }
    assert declared == {
        "HeatFlowRegressor.predict": np.asarray,
        "FalseTrueClassifier.classify": list,
        "FlowerClassifier.classify": list,
        "FaceAnalyzer.detect": list,
        "FaceAnalyzer.validate": list,
        "AntibioticPanel.susceptibility": list,
    }
