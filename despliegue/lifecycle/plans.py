"""What each family should serve: the state file first, then configuration.yaml.

A family with no entry in the state file serves what configuration.yaml names (`version:
latest` resolved in the store). Families here are configuration keys: `heatflow`, `falsetrue`,
`flowers`, `face_detector`, `face_validator`, and one `antibiotics.<CODE>` per antibiotic of
the panel (a new antibiotic joins the panel by being promoted). Read in every process: a
runner (what to load, what `bentoml build` packs), the API (GET /models) and the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bentoml

from despliegue import registry
from despliegue.artifacts import panel_models, stored_models
from despliegue.bentoml_compat import model_store_folder
from despliegue.config import FamilyConfig, PanelConfig, settings
from despliegue.lifecycle.state import FamilyState, LifecycleRefused, read_state

FROM_STATE = "state file"


FROM_CONFIGURATION = "configuration"


@dataclass(frozen=True)
class Plan:
    """The tags one family should have loaded, and where that choice comes from."""

    family: str
    model_name: str
    served: str
    canary: str | None
    percent: float
    shadow: str | None
    source: str
    previous: str | None = None


def _store_folder() -> Path:
    """The model store's folder (the Bento's own inside an image)."""
    return model_store_folder()


def resolve(tag: str) -> str:
    """`name:latest` as the concrete stored tag it names today (unchanged if not stored).

    Read from the store's folders, not through `bentoml.models.get`: that parses the model's
    YAML (tens of milliseconds with baseline statistics), and GET /models resolves every family.
    """
    name, _, version = tag.lower().partition(":")
    folder = _store_folder() / name
    if version in ("", "latest"):
        try:
            version = (folder / "latest").read_text().strip()
        except OSError:
            return tag
    return f"{name}:{version}" if (folder / version / "model.yaml").is_file() else tag


def configured_families(runner: str | None = None) -> dict[str, tuple[str, FamilyConfig | None]]:
    """Family key -> (the tag configuration serves, its entry), panel members included; only
    one runner's families if given (listing a panel's models reads the store)."""
    found: dict[str, tuple[str, FamilyConfig | None]] = {}
    for name, entry in settings().families.items():
        if runner is not None and registry.family_of(name).name != runner:
            continue
        if isinstance(entry, PanelConfig):
            for code, ref in panel_models(entry).items():
                found[f"{name}.{code}"] = (str(ref.tag), None)
        else:
            found[name] = (entry.tag, entry)
    return found


def model_name_of(family: str) -> str:
    name, _, code = family.partition(".")
    entry = settings().families[name]
    if isinstance(entry, PanelConfig):
        if not code:
            raise LifecycleRefused(f"{name} is a panel: name one member, e.g. {name}.AMK")
        return entry.model_name(code).lower()
    return entry.model.lower()


def plans(runner: str | None = None) -> dict[str, Plan]:
    """Every family's plan (or those of one runner): the state file first, then configuration."""
    state = read_state()
    configured = configured_families(runner)
    panels = [n for n, e in settings().families.items() if isinstance(e, PanelConfig)]
    promoted = {key for key in state.families if key.partition(".")[0] in panels}
    found: dict[str, Plan] = {}
    for family in sorted(configured.keys() | promoted):
        if runner is not None and registry.family_of(family).name != runner:
            continue
        default, entry = configured.get(family, (None, None))
        own = state.families.get(family, FamilyState())
        chosen = own.model_fields_set
        served = own.served if "served" in chosen and own.served else default
        if served is None:
            continue
        canary = own.canary if "canary" in chosen else (entry.canary if entry else None)
        shadow = own.shadow if "shadow" in chosen else (entry.shadow if entry else None)
        found[family] = Plan(
            family=family,
            model_name=model_name_of(family),
            served=resolve(served),
            canary=canary.tag if canary and canary.percent > 0 else None,
            percent=canary.percent if canary else 0.0,
            shadow=shadow,
            source=FROM_STATE if "served" in chosen and own.served else FROM_CONFIGURATION,
            previous=own.previous,
        )
    return found


def served_tags() -> dict[str, str]:
    """The tag each family serves now, by family key (what GET /models and drift read)."""
    return {family: plan.served for family, plan in plans().items()}


def packed_tags(runner: str) -> list[str]:
    """Tags `bentoml build` must pack for a runner: what it serves (missing ones too, so
    start-up fails naming them), plus canary, shadow and previous tags that are stored, so a
    rollback or a canary works inside the image."""
    tags: list[str] = []
    for plan in plans(runner).values():
        tags.append(plan.served)
        others = (plan.canary, plan.shadow, plan.previous)
        tags += [resolve(tag) for tag in others if is_stored(tag)]
    return list(dict.fromkeys(tags))


def is_stored(tag: str | None) -> bool:
    if not tag:
        return False
    name, _, version = resolve(tag).lower().partition(":")
    return (_store_folder() / name / version / "model.yaml").is_file()


def packs_served_models(runner: str, stored_only: bool = False) -> Callable[[type], type]:
    """Class decorator (under @bentoml.service): one BentoModel attribute per tag the runner
    may serve, which is how `bentoml build` knows which models go into the Bento.

    `stored_only`, for the API service holding a runner: BentoML looks the entry service's
    models up before its preflight runs and stops with a message of its own, so a tag missing
    from the store (or unreadable) is left to the preflight, which names it and the fix."""

    def declare(cls: type) -> type:
        tags = packed_tags(runner)
        if stored_only:
            tags = [tag for tag in tags if readable_in_store(tag)]
        for index, tag in enumerate(tags):
            # Named by runner: the API service declares the models of the runners it holds.
            setattr(cls, f"{runner}_model_{index}", bentoml.models.BentoModel(tag))
        return cls

    return declare


def readable_in_store(tag: str) -> bool:
    """Whether BentoML can read the tag's model from the store (the preflight names what is
    missing, unreadable or damaged)."""
    try:
        if not is_stored(tag):
            return False
        bentoml.models.get(resolve(tag))
    except Exception:  # any failure to read it is the preflight's to report
        return False
    return True


def family_of_model(model_name: str) -> str | None:
    """The family key a store name serves (`modelo_CIP_NM` -> `antibiotics.CIP`), if any."""
    for name, entry in settings().families.items():
        if isinstance(entry, PanelConfig):
            code = entry.code_of(model_name)
            if code:
                return f"{name}.{code}"
        elif entry.model.lower() == model_name.lower():
            return name
    return None


def candidates(plan: Plan) -> list[str]:
    """Stored versions of a family's model that it does not serve, newest first."""
    return [str(m.tag) for m in stored_models(plan.model_name) if str(m.tag) != plan.served]
