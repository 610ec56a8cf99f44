"""The model families this service serves, in one table: every family-specific list is read here.

A family is one runner service (its own process, reached from the API with `bentoml.depends`,
or an instance inside each API worker where a hop buys nothing: `placement`) and the stored
model(s) it loads. Each model has a key under `families:` in configuration.yaml,
a recipe that builds its reference model and probes an imported one (despliegue/families/), the
batchable runner method that calls it, how a shadow model's answer is compared with the served
one's (the runner's shadow lane), how a call's traffic is summarised for drift (the API worker),
and, if it takes any, how data given at import becomes its drift baseline. From this table come:
the runner attributes of the API service and the coalescer of each runner method (service.py),
`GET /models` and /readyz, the families configuration must hold and which of them need a
threshold, the service names allowed under `bentoml.services` and the admission classes allowed
under `limits.in_flight_share` (despliegue/config.py), the
recipes `save_models.py` walks, the runner each lifecycle key belongs to and its comparison
(despliegue/lifecycle/), and the drift families, summaries and import baselines
(despliegue/drift/). No other module lists the families.

Every part is named by import path ("module:attribute") and imported only when asked for:
configuration loading reads this table, and a runner module reads configuration (and the model
store) when it is imported. `check()` imports every part and says which one is missing or
wrong. How to add a family: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from despliegue.families.base import Recipe

# The public API service; its options live under `bentoml.services` beside the runners'.
API_SERVICE = "Despliegue"
# Where a family's runner runs: its own process, or inside each API worker (Family.placement).
PLACEMENTS = ("runner", "api")


def imported(path: str) -> Any:
    """The object a "package.module:attribute" path names, imported on first use."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:attribute'")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class Model:
    """One stored model (or open panel of models) a family's runner serves."""

    # Its key under `families:` in configuration.yaml, and the `family` of its stored models.
    key: str
    # "module:ATTRIBUTE" of its Recipe: how save_models.py builds or imports it.
    recipe: str
    # The runner's batchable method that calls this model (the API coalesces calls to it).
    method: str
    # Configuration must give it a decision threshold (`families.<key>.threshold`).
    needs_threshold: bool = False
    # An open set of models named by `model_pattern` (one per code) instead of one `model`.
    panel: bool = False
    # "module:function" (served answer item, shadow answer item) -> (agree, absolute
    # difference): how the runner compares a shadow model's answers with the served model's.
    compare: str = ""
    # "module:function" (call inputs, answers, model cards) -> one drift observation per model
    # that answered: how the API worker summarises a call of `method` for drift.
    summarise: str = ""
    # "module:function" (model, metadata, path) -> (items, answers): data given at import
    # (`save_models.py import ... --baseline PATH`) answered as the runner would, for the
    # model's drift baseline. Empty: no baseline from data (the first requests make one).
    import_answers: str = ""
    # "module:ATTRIBUTE" of its Open Inference Protocol signature (despliegue/v2/models.py):
    # its typed tensors and the seed endpoint a V2 infer call is answered by.
    inference: str = ""

    # The parts every model must name (check() says which one is missing).
    REQUIRED_PARTS = ("recipe", "compare", "summarise")
    PARTS = ("recipe", "compare", "summarise", "import_answers", "inference")

    def part(self, name: str) -> Any:
        """The object a part names, imported on first use."""
        return imported(getattr(self, name))


@dataclass(frozen=True)
class Family:
    """One runner service and the models it loads."""

    # The API service's attribute for this runner, the name /readyz reports, and the UI's tag.
    name: str
    # "module:Class" of the runner service; the class name keys `bentoml.services` options.
    runner: str
    models: tuple[Model, ...]
    # The first path segment of each of its endpoints (/face and /super: "face", "super").
    paths: tuple[str, ...]
    # What the Swagger UI says of its endpoints, grouped under `tag` (default: the name).
    summary: str
    ui_tag: str = ""
    # The class of its requests in each API worker's admission: a class given a share in
    # `limits.in_flight_share` holds at most that share of `limits.max_requests_in_flight`
    # (despliegue/http/guards.py: InFlightLimit), so a burst of slow requests leaves the others
    # places of their own.
    admission: str = "light"
    # Where its runner runs by default: "runner", its own process (adaptive batching there, and
    # a tier that scales apart: deploy/k8s/split); "api", an instance of the same runner class
    # inside each API worker, called without a hop (a small model answers in less time than the
    # hop takes). `placement:` in configuration.yaml overrides it per family.
    placement: str = "runner"
    # "module:SCORER" of its batch scoring (despliegue/batch/families.py): what an item is and
    # how the API's answer becomes one row. Empty: `python -m despliegue.batch` refuses it.
    batch: str = ""

    @property
    def tag(self) -> str:
        """The OpenAPI tag its endpoints are grouped under."""
        return self.ui_tag or self.name

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"family name {self.name!r} must be a Python identifier")
        if not self.models:
            raise ValueError(f"family {self.name!r} serves no model")
        if not self.paths or not self.summary:
            raise ValueError(f"family {self.name!r} needs its paths and a summary")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"family {self.name!r}: placement {self.placement!r} is unknown")
        if not self.admission.isidentifier():
            raise ValueError(f"family {self.name!r}: admission {self.admission!r} is not a name")
        named = [("runner", self.runner)]
        for m in self.models:
            named += [(m.key, m.recipe)]
            named += [(f"{m.key} {part}", getattr(m, part)) for part in Model.PARTS[1:]]
        for part, value in named:
            module_name, _, attribute = value.partition(":")
            if value and (not module_name or not attribute):
                raise ValueError(
                    f"family {self.name!r}: {part} {value!r} is not 'package.module:attribute'"
                )
        for model in self.models:
            if not model.key or not model.method:
                raise ValueError(f"family {self.name!r}: a model needs a key and a method")

    @property
    def service_name(self) -> str:
        """The runner service's name: its class name, as BentoML names it."""
        return self.runner.rpartition(":")[2]

    def runner_class(self) -> Any:
        return imported(self.runner)


FAMILIES: tuple[Family, ...] = (
    Family(
        name="heatflow",
        runner="runners.heatflow:HeatFlowRegressor",
        models=(
            Model(
                "heatflow",
                "despliegue.families.heatflow:RECIPE",
                method="predict",
                compare="despliegue.lifecycle.comparisons:same_value",
                summarise="despliegue.drift.summaries:heatflow_summary",
                import_answers="despliegue.drift.baselines:heatflow_import_answers",
                inference="despliegue.v2.models:HEATFLOW",
            ),
        ),
        paths=("heatflow",),
        summary="Seed 000: surface heat flow (mW/m²) from sediment thickness (scikit-learn SVR).",
        placement="api",
        batch="despliegue.batch.families:HEATFLOW",
    ),
    Family(
        name="falsetrue",
        runner="runners.falsetrue:FalseTrueClassifier",
        models=(
            Model(
                "falsetrue",
                "despliegue.families.falsetrue:RECIPE",
                method="classify",
                compare="despliegue.lifecycle.comparisons:same_label",
                summarise="despliegue.drift.summaries:falsetrue_summary",
                import_answers="despliegue.drift.baselines:falsetrue_import_answers",
                inference="despliegue.v2.models:FALSETRUE",
            ),
        ),
        paths=("falsetrue",),
        summary="Seed 004: is a news text False (0) or Real (1)? (scikit-learn text pipeline)",
        placement="api",
        batch="despliegue.batch.families:FALSETRUE",
    ),
    Family(
        name="flowers",
        runner="runners.flowers:FlowerClassifier",
        models=(
            Model(
                "flowers",
                "despliegue.families.flowers:RECIPE",
                method="classify",
                needs_threshold=True,
                compare="despliegue.lifecycle.comparisons:same_class",
                summarise="despliegue.drift.summaries:flowers_summary",
                import_answers="despliegue.drift.baselines:flowers_import_answers",
                inference="despliegue.v2.models:FLOWERS",
            ),
        ),
        paths=("flowers",),
        summary="Seed 002: 18 Oxford-102 flower classes from a photo (Keras CNN).",
        admission="images",
        batch="despliegue.batch.families:FLOWERS",
    ),
    Family(
        name="faces",
        runner="runners.faces:FaceAnalyzer",
        models=(
            Model(
                "face_detector",
                "despliegue.families.faces:DETECTOR",
                method="detect",
                needs_threshold=True,
                compare="despliegue.lifecycle.comparisons:same_faces",
                summarise="despliegue.drift.summaries:face_detector_summary",
                inference="despliegue.v2.models:FACE_DETECTOR",
            ),
            Model(
                "face_validator",
                "despliegue.families.faces:VALIDATOR",
                method="validate",
                needs_threshold=True,
                compare="despliegue.lifecycle.comparisons:same_verdict",
                summarise="despliegue.drift.summaries:face_validator_summary",
                inference="despliegue.v2.models:FACE_VALIDATOR",
            ),
        ),
        paths=("face", "super"),
        summary="Seed 001: /face finds faces (MTCNN); /super validates each face (Keras CNN).",
        ui_tag="img_super",
        admission="images",
        batch="despliegue.batch.families:FACES",
    ),
    Family(
        name="antibiotics",
        runner="runners.antibiotics:AntibioticPanel",
        models=(
            Model(
                "antibiotics",
                "despliegue.families.antibiotics:RECIPE",
                method="susceptibility",
                panel=True,
                compare="despliegue.lifecycle.comparisons:same_class",
                summarise="despliegue.drift.summaries:antibiotics_summary",
                import_answers="despliegue.drift.baselines:antibiotics_import_answers",
                inference="despliegue.v2.models:ANTIBIOTIC",
            ),
        ),
        paths=("antibiotics",),
        summary="Seed 003: S / I / R per antibiotic, one Keras model per code (open panel).",
        batch="despliegue.batch.families:ANTIBIOTICS",
    ),
)


def models() -> tuple[Model, ...]:
    """Every model of every family, in table order."""
    return tuple(model for family in FAMILIES for model in family.models)


def model_keys() -> tuple[str, ...]:
    """The keys configuration.yaml must hold under `families:`."""
    return tuple(model.key for model in models())


def service_names() -> tuple[str, ...]:
    """Every BentoML service of the product: the API first, then each runner."""
    return (API_SERVICE, *(family.service_name for family in FAMILIES))


def admission_classes() -> tuple[str, ...]:
    """The admission classes the families name, in table order."""
    return tuple(dict.fromkeys(family.admission for family in FAMILIES))


def admission_of(path: str) -> str | None:
    """The admission class of a request path: its family's (the first segment names it), or
    None for a path no family serves (the catalog, drift)."""
    segment = path.strip("/").split("/")[0]
    return next((f.admission for f in FAMILIES if segment in f.paths), None)


def family(name: str) -> Family:
    for entry in FAMILIES:
        if entry.name == name:
            return entry
    raise KeyError(f"no family {name!r}; families: {', '.join(f.name for f in FAMILIES)}")


def recipes() -> dict[str, Recipe]:
    """Every model's recipe by model key, in table order (what `save_models.py` walks)."""
    return {model.key: model.part("recipe") for model in models()}


def model(key: str) -> Model:
    """The model of a configuration key; `antibiotics.AMK` is a member of the `antibiotics`
    panel."""
    name = key.partition(".")[0]
    for entry in models():
        if entry.key == name:
            return entry
    raise KeyError(f"no model {key!r}; models: {', '.join(model_keys())}")


def check(families: tuple[Family, ...] | None = None) -> None:
    """Import every part the table names and check they fit together: each runner has each
    method the table names, each recipe is for its model's key, each comparison, summary and
    import answer is a function. Raises ValueError naming the entry and the part that is
    missing or wrong (tests call this; serving imports the same parts anyway)."""
    families = FAMILIES if families is None else families
    names = [entry.name for entry in families]
    keys = [model.key for entry in families for model in entry.models]
    for kind, values in (("family name", names), ("model key", keys)):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"{kind}s must be unique; repeated: {repeated}")
    for entry in families:
        try:
            runner = entry.runner_class()
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"family {entry.name!r}: runner {entry.runner!r}: {exc}") from exc
        apis = getattr(runner, "apis", None)
        if apis is None:
            raise ValueError(f"family {entry.name!r}: {entry.runner} is not a @bentoml.service")
        if "describe" not in apis:
            raise ValueError(
                f"family {entry.name!r}: {entry.service_name} needs a `describe` API method "
                "(GET /models lists the cards it returns)"
            )
        for model in entry.models:
            if model.method not in apis:
                raise ValueError(
                    f"family {entry.name!r}: {entry.service_name} has no API method "
                    f"{model.method!r} (it has {sorted(apis)})"
                )
            if model.inference and model.method + "_pinned" not in apis:
                raise ValueError(
                    f"family {entry.name!r}: {entry.service_name} has no {model.method}_pinned "
                    "(a V2 infer pinned to a version calls it): decorate the class with "
                    "@with_pinned_twins (despliegue/lifecycle/pinning.py)"
                )
            try:
                recipe = imported(model.recipe)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"model {model.key!r}: recipe {model.recipe!r}: {exc}") from exc
            if not isinstance(recipe, Recipe) or recipe.family != model.key:
                raise ValueError(
                    f"model {model.key!r}: {model.recipe} is not the Recipe of family {model.key!r}"
                )
            _check_functions(entry, model)
        if entry.batch:
            try:
                scorer = imported(entry.batch)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"family {entry.name!r}: batch {entry.batch!r}: {exc}") from exc
            if getattr(scorer, "family", None) != entry.name:
                raise ValueError(f"family {entry.name!r}: {entry.batch} is not its batch scorer")


def _check_functions(entry: Family, model: Model) -> None:
    """The comparison, the drift summary and (if named) the import answers: functions; the
    V2 signature (if named): a Signature."""
    for part in Model.PARTS[1:]:
        path = getattr(model, part)
        where = f"family {entry.name!r}: model {model.key!r}"
        if not path:
            if part in Model.REQUIRED_PARTS:
                raise ValueError(f"{where} names no {part} ('module:function')")
            continue
        try:
            function = imported(path)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{where}: {part} {path!r}: {exc}") from exc
        if part == "inference":
            if not callable(getattr(function, "answer", None)):
                raise ValueError(f"{where}: {part} {path!r} is not a V2 Signature")
            continue
        if not callable(function):
            raise ValueError(f"{where}: {part} {path!r} is not a function")


def family_of(key: str) -> Family:
    """The family whose runner serves the model of configuration key `key` (a panel member,
    `antibiotics.AMK`, is served by its panel's runner)."""
    key = key.partition(".")[0]
    for entry in FAMILIES:
        if any(model.key == key for model in entry.models):
            return entry
    raise KeyError(f"no model {key!r}; models: {', '.join(model_keys())}")
