"""Families that follow an MLflow registry alias: import (once) what the alias points to, and
promote it (`save_models.py sync`). Runs in the operator's process only.
"""

from __future__ import annotations

from dataclasses import dataclass

from despliegue.artifacts import stored_models
from despliegue.config import PanelConfig, settings
from despliegue.importing import ImportRefused
from despliegue.lifecycle.commands import pin_before_import, promote
from despliegue.lifecycle.plans import FROM_STATE, family_of_model, plans
from despliegue.mlflow_import import import_mlflow, require_registry


@dataclass(frozen=True)
class Synced:
    family: str
    uri: str
    version: str
    tag: str
    action: str  # "promoted", "already served", "refused: ..."


def followed_aliases() -> dict[str, str]:
    """Registry URI (models:/NAME@ALIAS) -> store name, for every family that follows an alias.
    A panel follows every registered model whose name fits its pattern (new codes included)."""
    import mlflow

    followed: dict[str, str] = {}
    for entry in settings().families.values():
        if entry.mlflow_alias is None:
            continue
        if isinstance(entry, PanelConfig):
            names = [
                registered.name
                for registered in mlflow.MlflowClient().search_registered_models()
                if entry.code_of(registered.name)
            ]
        else:
            names = [entry.model]
        followed.update({f"models:/{name}@{entry.mlflow_alias}": name for name in names})
    return followed


def _imported_version(model_name: str, registered: str, version: str) -> str | None:
    """The stored tag already imported from this registered model version, if any."""
    for stored in stored_models(model_name):
        meta = stored.info.metadata
        if meta.get("mlflow_registered_model") == registered and str(
            meta.get("mlflow_version")
        ) == str(version):
            return str(stored.tag)
    return None


def sync(why: str = "") -> list[Synced]:
    """Import (once) what each followed alias points to, and promote it."""
    if not any(entry.mlflow_alias for entry in settings().families.values()):
        return []  # no registry is opened: MLflow's client creates its local default on open
    require_registry("sync")
    import mlflow

    client = mlflow.MlflowClient()
    done: list[Synced] = []
    for uri, model_name in sorted(followed_aliases().items()):
        registered, _, alias = uri.removeprefix("models:/").partition("@")
        family = family_of_model(model_name) or model_name
        try:
            version = str(client.get_model_version_by_alias(registered, alias).version)
        except Exception as exc:
            done.append(Synced(family, uri, "", "", f"refused: {exc}"))
            continue
        tag = _imported_version(model_name, registered, version)
        if tag is None:
            try:
                pin_before_import(model_name)
                tag = import_mlflow(uri, model_name).tag
            except ImportRefused as exc:
                done.append(Synced(family, uri, version, "", f"refused: {exc}"))
                continue
        plan = plans().get(family)
        if plan is not None and plan.served == tag and plan.source == FROM_STATE:
            done.append(Synced(family, uri, version, tag, "already served"))
            continue
        reason = why or f"sync: {uri} is version {version}"
        promote(family, tag, reason)
        done.append(Synced(family, uri, version, tag, "promoted"))
    return done
