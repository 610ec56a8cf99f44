"""The operator's commands: promote, rollback, canary, shadow, and the pins around an import.

`save_models.py promote | rollback | canary | shadow | history` call these; each one changes
the state file (despliegue/lifecycle/state.py) and appends its audit line. They run in the
operator's process, never in a server: a running service follows the file.
"""

from __future__ import annotations

from despliegue.config import Canary, PanelConfig, settings
from despliegue.lifecycle.plans import (
    FROM_STATE,
    family_of_model,
    is_stored,
    model_name_of,
    plans,
    resolve,
)
from despliegue.lifecycle.state import FamilyState, LifecycleRefused, audit, changing_state


def _require_tag(family: str, tag: str) -> str:
    """The concrete stored tag, refused unless it exists and is a model of that family."""
    expected = model_name_of(family)
    if tag.partition(":")[0].lower() != expected:
        raise LifecycleRefused(f"{tag} is not a model of {family} (its models are {expected}:…)")
    if not is_stored(tag):
        raise LifecycleRefused(
            f"{tag} is not in the model store; `save_models.py list` shows the stored tags"
        )
    return resolve(tag)


def family_key(family: str, tag: str | None = None) -> str:
    """A family key as typed, or `antibiotics` + a panel model's tag -> `antibiotics.CODE`."""
    name, _, code = family.partition(".")
    if name not in settings().families:
        known = ", ".join(sorted(settings().families))
        raise LifecycleRefused(f"unknown family {family!r}; families: {known}")
    entry = settings().families[name]
    if isinstance(entry, PanelConfig) and not code and tag:
        member = entry.code_of(tag.partition(":")[0])
        if member:
            return f"{name}.{member}"
    return family


def promote(family: str, tag: str, why: str) -> dict:
    family = family_key(family, tag)
    tag = _require_tag(family, tag)
    current = plans().get(family)
    before = current.served if current else None
    if before == tag and current is not None and current.source == FROM_STATE:
        raise LifecycleRefused(f"{family} already serves {tag}")
    if before == tag:
        before = None  # served by configuration until now: recorded, nothing to return to
    with changing_state() as state:
        own = state.families.setdefault(family, FamilyState())
        own.served = tag
        if before is not None:
            own.previous = before
        if own.canary is not None and own.canary.tag == tag:
            own.canary = None  # the canary became the served model
        if own.shadow == tag:
            own.shadow = None
    return audit(family, "promote", before, tag, why)


def rollback(family: str, why: str) -> dict:
    family = family_key(family)
    with changing_state() as state:
        own = state.families.get(family)
        if own is None or not own.previous:
            raise LifecycleRefused(f"{family} has no previous tag to roll back to")
        if not is_stored(own.previous):
            raise LifecycleRefused(f"{own.previous} is no longer in the model store")
        before = own.served
        own.served, own.previous = own.previous, own.served
    return audit(family, "rollback", before, own.served, why)


def set_canary(family: str, tag: str | None, percent: float, why: str) -> dict:
    """A canary answering `percent` % of requests (tag None or percent 0: no canary)."""
    family = family_key(family, tag)
    if not 0 <= percent <= 100:
        raise LifecycleRefused(f"percent must be between 0 and 100, got {percent}")
    canary = Canary(tag=_require_tag(family, tag), percent=percent) if tag and percent else None
    before = plans().get(family)
    with changing_state() as state:
        state.families.setdefault(family, FamilyState()).canary = canary
    was = f"{before.canary} {before.percent:g}%" if before and before.canary else None
    now = f"{canary.tag} {canary.percent:g}%" if canary else None
    return audit(family, "canary", was, now, why)


def set_shadow(family: str, tag: str | None, why: str) -> dict:
    family = family_key(family, tag)
    shadow = _require_tag(family, tag) if tag else None
    before = plans().get(family)
    with changing_state() as state:
        state.families.setdefault(family, FamilyState()).shadow = shadow
    return audit(family, "shadow", before.shadow if before else None, shadow, why)


def pin_before_import(model_name: str) -> dict | None:
    """Before an import: record what the family serves now, if only configuration said it
    (`version: latest` would otherwise make the import the served model at the next start)."""
    family = family_of_model(model_name)
    if family is None:
        return None
    plan = plans().get(family)
    if plan is None or plan.source == FROM_STATE or not is_stored(plan.served):
        return None
    with changing_state() as state:
        state.families.setdefault(family, FamilyState()).served = plan.served
    return audit(
        family, "pin", None, plan.served, f"import of a new {model_name}: stays a candidate"
    )


def serve_if_first(model_name: str, tag: str) -> dict | None:
    """After an import: a family that served nothing (a new antibiotic) serves its first model."""
    family = family_of_model(model_name)
    if family is None:
        return None
    plan = plans().get(family)
    if plan is not None and is_stored(plan.served) and plan.served != tag:
        return None
    with changing_state() as state:
        state.families.setdefault(family, FamilyState()).served = tag
    return audit(family, "promote", None, tag, "first model of this family in the store")
