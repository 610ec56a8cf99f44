"""The family registry: every entry is whole, and what is derived from it is derived.

A family missing a part (runner, method, recipe, describe) fails here, naming the part; the
configuration refuses families and BentoML service names the registry does not know, naming the
ones it does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from despliegue import registry
from despliegue.config import ConfigurationError, load_settings
from despliegue.families.base import Recipe
from despliegue.registry import FAMILIES, Family
from tests.conftest import fresh_interpreter_json
from tests.unit.test_config import write_config

HEATFLOW = FAMILIES[0].models[0]
RECIPES = registry.recipes()


def test_every_entry_names_parts_that_exist_and_fit() -> None:
    registry.check()


def test_recipes_are_the_registry_models() -> None:
    assert list(RECIPES) == list(registry.model_keys())
    assert all(RECIPES[key].family == key for key in RECIPES)


def test_the_image_families_are_admitted_as_images_and_the_rest_as_light() -> None:
    admitted = {
        path: registry.admission_of(path) for path in ("/face", "/super/upload", "/flowers")
    }
    assert set(admitted.values()) == {"images"}, admitted
    assert {registry.admission_of(p) for p in ("/heatflow", "/falsetrue", "/antibiotics")} == {
        "light"
    }
    assert registry.admission_of("/models") is None


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


DECLARED_MODELS = """
import json
import service
from despliegue.config import settings
from despliegue.lifecycle.plans import packed_tags, readable_in_store
from despliegue.registry import FAMILIES

inside = [family for family in FAMILIES if settings().in_api(family)]
wanted = [tag for family in inside for tag in packed_tags(family.name)]
declared = sorted(str(model.tag) for model in service.Despliegue.models)
print(json.dumps([declared, sorted(tag for tag in wanted if readable_in_store(tag))]))
"""


def test_the_api_service_depends_on_every_runner_of_the_registry(reference_store: str) -> None:
    """service.py derives its runner attributes from the registry: none is forgotten. A family
    placed in the API worker is no dependency (no process of its own), but its models are
    still declared, so `bentoml build` packs them."""
    import service
    from despliegue.config import settings

    apart = [family for family in FAMILIES if not settings().in_api(family)]
    inside = [family for family in FAMILIES if settings().in_api(family)]
    assert {family.name for family in inside} == {"heatflow", "falsetrue"}
    dependencies = service.Despliegue.dependencies
    assert {name: dep.on.name for name, dep in dependencies.items()} == {
        family.name: family.service_name for family in apart
    }
    assert set(service.THRESHOLDS) == {"flowers", "face_detector", "face_validator"}
    # Declared: what those runners may serve that BentoML can read (the preflight names the
    # rest), in the reference store. Read in a fresh interpreter: the models are declared when
    # `service` is imported, and this process may have imported it before the store was built.
    declared, readable = fresh_interpreter_json(DECLARED_MODELS, reference_store)
    assert len(readable) == len(inside) and declared == readable, (declared, readable)


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


# --- A sixth family, added by its registry entry alone -----------------------------------------


def tiny_compare(served: Any, other: Any) -> tuple[bool, float]:
    return served == other, abs(served - other)


def tiny_summary(values: Any, answers: Any, cards: Any) -> list:
    return []


def tiny_import_answers(model: Any, metadata: Any, path: Path) -> tuple[list, Any]:
    return [], []


TINY_RECIPE = Recipe(
    family="tiny",
    model_name="tiny_model",
    framework="sklearn",
    description="a family that exists only in this test",
    build_reference=lambda: None,
    probe=lambda model: None,
)


def tiny_family(**parts: str) -> Family:
    """The tiny family's entry: every part named in this module, `parts` changed."""
    named = {
        "compare": f"{__name__}:tiny_compare",
        "summarise": f"{__name__}:tiny_summary",
        "import_answers": f"{__name__}:tiny_import_answers",
        **parts,
    }
    model = registry.Model("tiny", f"{__name__}:TINY_RECIPE", method="score", **named)
    return Family(
        name="tiny",
        runner=f"{__name__}:TinyRunner",
        models=(model,),
        paths=("tiny",),
        summary="A tiny family, defined in the test.",
    )


@pytest.fixture
def with_tiny_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[Family]:
    """A copy of the registry with the tiny family added (its runner defined here)."""
    import sys

    import bentoml

    @bentoml.service
    class TinyRunner:
        @bentoml.api(batchable=True)
        def score(self, values: list[float]) -> list[float]:
            return values

        @bentoml.api
        def describe(self) -> dict:
            return {}

    monkeypatch.setattr(sys.modules[__name__], "TinyRunner", TinyRunner, raising=False)
    tiny = tiny_family()
    monkeypatch.setattr(registry, "FAMILIES", (*FAMILIES, tiny))
    yield tiny
    monkeypatch.undo()
    clear_derived_tables()


def clear_derived_tables() -> None:
    from despliegue.drift import baselines, capture
    from despliegue.lifecycle import comparisons

    for cached in (comparisons.comparisons, capture.monitored_methods, baselines.import_answers):
        cached.cache_clear()


def test_every_table_derived_from_the_registry_includes_a_new_family(
    with_tiny_family: Family, tmp_path: Path
) -> None:
    from despliegue.drift import baselines, capture
    from despliegue.http import docs
    from despliegue.lifecycle import comparisons

    clear_derived_tables()
    registry.check()
    assert registry.model_keys()[-1] == "tiny"
    assert registry.service_names()[-1] == "TinyRunner"
    assert registry.recipes()["tiny"] is TINY_RECIPE
    assert registry.family_of("tiny") is with_tiny_family
    # The runner's shadow lane (lifecycle) and the API worker's drift capture.
    assert comparisons.comparison("tiny") is tiny_compare
    assert capture.families()[-1] == "tiny"
    assert capture.runners_of("tiny") == ["tiny"]
    assert capture.monitored_methods()["tiny"].summarise is tiny_summary
    assert baselines.import_answers()["tiny"] is tiny_import_answers
    # Its requests' admission class in the API worker (light unless the entry says otherwise).
    assert registry.admission_of("/tiny") == "light" and "light" in registry.admission_classes()
    # The Swagger UI's grouping, and the configuration that must now hold the family.
    assert docs.family_tag("/tiny") == "tiny"
    assert docs.tag_descriptions()["tiny"] == with_tiny_family.summary
    with pytest.raises(ConfigurationError, match="missing families: \\['tiny'\\]"):
        load_settings(write_config(tmp_path, lambda raw: None))
    # The API service: one runner attribute per family.
    import service

    assert hasattr(service.with_runners(type("Api", (), {})), "tiny")


@pytest.mark.parametrize("part", ["compare", "summarise"])
def test_a_family_leaving_out_a_part_fails_the_check_naming_it(
    with_tiny_family: Family, part: str
) -> None:
    with pytest.raises(ValueError, match=f"family 'tiny': model 'tiny' names no {part}"):
        registry.check((tiny_family(**{part: ""}),))


@pytest.mark.parametrize("part", ["compare", "summarise", "import_answers"])
def test_a_part_that_is_not_there_fails_the_check_naming_it(
    with_tiny_family: Family, part: str
) -> None:
    with pytest.raises(ValueError, match=f"model 'tiny': {part} '{__name__}:nothing'"):
        registry.check((tiny_family(**{part: f"{__name__}:nothing"}),))
    with pytest.raises(ValueError, match=f"{part} '{__name__}:TINY_RECIPE' is not a function"):
        registry.check((tiny_family(**{part: f"{__name__}:TINY_RECIPE"}),))


def test_a_family_may_take_no_baseline_data_at_import(with_tiny_family: Family) -> None:
    registry.check((tiny_family(import_answers=""),))
