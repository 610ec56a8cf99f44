"""Put every model the service needs into the BentoML model store.

    python save_models.py                         build the reference models that are missing
    python save_models.py reference [NAME ...]    the same, for some model names only
    python save_models.py import NAME FILE        import your own artifact under a model name
    python save_models.py import NAME SAVEDMODEL_FOLDER    a TensorFlow SavedModel, stored as .keras
    python save_models.py import NAME models:/NAME/VERSION | models:/NAME@ALIAS | models:/NAME/STAGE
                          | models:/NAME/latest | runs:/RUN_ID/PATH | MLFLOW_FOLDER
                                                  import a model from MLflow (the registry at
                                                  $MLFLOW_TRACKING_URI, or a folder): flavour
                                                  sklearn for heatflow_svr and falsetrue_classifier,
                                                  keras or tensorflow for the others
    python save_models.py list [--json]           show what the store holds
    python save_models.py promote FAMILY TAG --why TEXT    serve TAG (a running service follows)
    python save_models.py rollback FAMILY --why TEXT       serve the previously served tag again
    python save_models.py canary FAMILY TAG PERCENT --why TEXT
                                                  send PERCENT % of requests to TAG (0: no canary)
    python save_models.py shadow FAMILY [TAG] --why TEXT   give TAG a copy of every request
    python save_models.py history [FAMILY] [--json]   who changed what each family serves, and why
    python save_models.py sync                    import and serve what followed MLflow aliases name
    python save_models.py backup DIR              export every stored model + sha256 manifest
    python save_models.py restore DIR             verify a backup, then import it

Answers (tables, summaries, the tag an import stored) are printed on stdout, and with --json
(list, history) as one JSON document for scripts; progress, warnings and refusals on stderr.

An import is a candidate: the family keeps serving what it served until `promote`. FAMILY is a
configuration key (heatflow, falsetrue, flowers, face_detector, face_validator) or one
antibiotic of the panel (antibiotics.AMK). Every change is recorded in the lifecycle state file
and appended to its history (despliegue/lifecycle/); a running service picks it up within
seconds, without a restart.

Reference models are small models trained on data the project generates or ships (their
metadata says `reference: true`); replace any of them by importing your own artifact. An
import is loaded and called on a probe input before it enters the store: if that fails, the
command exits with status 1 and the store is unchanged. The store lives in $BENTOML_HOME
(default ~/bentoml).

An image model's preprocessing is decided at import: raw 0-255 if the model scales its own
input (Rescaling/Normalization layers), else pixels / 255; --preprocessing (a preset) and
--scale/--offset/--mean/--std/--channels override it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import bentoml
from rich.console import Console
from rich.measure import Measurement
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from despliegue import registry
from despliegue.artifacts import stored_models
from despliegue.backup import BackupRefused, backup, restore
from despliegue.bentoml_compat import bentoml_home
from despliegue.config import ConfigurationError, FamilyConfig, settings
from despliegue.families.base import Recipe
from despliegue.importing import ImportRefused, Outcome, ensure_reference, import_artifact
from despliegue.lifecycle import commands, mlflow_sync
from despliegue.lifecycle import plans as lifecycle_plans
from despliegue.lifecycle import state as lifecycle_state
from despliegue.mlflow_import import import_mlflow, is_mlflow_source
from despliegue.preprocessing import PRESETS
from despliegue.preprocessing import summary as preprocessing_summary
from despliegue.quiet import import_tensorflow

# Every model's recipe by model key, in the registry's order. Reading them reads the
# configuration: a mistake there is said in one line naming the key, not as a traceback.
try:
    RECIPES = registry.recipes()
except ConfigurationError as exc:
    sys.exit(f"save_models.py: {exc}")

# The command's answers (tables, summaries, the tag an import stored) go to stdout, so they can
# be piped and read by scripts; progress, warnings and refusals go to stderr.
out = Console()
err = Console(stderr=True)


def show(table: Table) -> None:
    """Print a table on stdout at its full width, even wider than the terminal: a tag cut to
    `flower_classifier:6l…` cannot be copied into a command."""
    needed = Measurement.get(out, out.options.update_width(10_000), table).maximum
    (out if needed <= out.width else Console(width=needed)).print(table)


def show_json(value: Any) -> None:
    """An answer for scripts (`--json`): one JSON document on stdout, nothing else there."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def prepare_tensorflow(recipes: list[Recipe]) -> None:
    """Import TensorFlow (quietly) before any progress line is drawn, if a recipe needs it."""
    if any(recipe.framework != "sklearn" for recipe in recipes):
        import_tensorflow()


def configured_model_names() -> frozenset[str]:
    """The store names configuration.yaml serves (single-model families)."""
    entries = settings().families.values()
    return frozenset(entry.model for entry in entries if isinstance(entry, FamilyConfig))


def reference_targets(selection: list[str]) -> list[tuple[Recipe, str]]:
    """(recipe, store name) pairs to build: all, or those named by family or model name.
    An optional reference (BlazeFace) is built when named or when configuration serves it."""
    wanted = configured_model_names() | frozenset(selection)
    everything = [
        (recipe, name) for recipe in RECIPES.values() for name in recipe.references(wanted)
    ]
    if not selection:
        return everything
    unknown = [
        item
        for item in selection
        if item not in RECIPES and not any(recipe.matches(item) for recipe in RECIPES.values())
    ]
    if unknown:
        raise ValueError(f"unknown families or model names: {', '.join(unknown)}")
    return [
        (recipe, name)
        for recipe, name in everything
        if recipe.family in selection or name in selection
    ]


def build_missing_references(selection: list[str] | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    targets = reference_targets(selection or [])
    prepare_tensorflow([recipe for recipe, name in targets if not stored_models(name)])
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        for recipe, name in targets:
            task = progress.add_task(f"{name}: {recipe.description}", total=None)
            outcomes.append(ensure_reference(recipe, name))
            progress.remove_task(task)
    return outcomes


def print_outcomes(outcomes: list[Outcome]) -> None:
    table = Table(title="Model store")
    for column in ("model", "tag", "action", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for outcome in outcomes:
        table.add_row(outcome.model_name, outcome.tag, outcome.action, outcome.detail)
    show(table)
    if all(outcome.action == "kept" for outcome in outcomes):
        out.print("Nothing to do: every model is already in the store.")
    for outcome in outcomes:
        for warning in outcome.warnings:
            err.print(f"[bold yellow]warning:[/] {outcome.model_name}: {warning}")


def serving_keys() -> dict[str, str]:
    """Stored tag -> the configuration key serving it (`heatflow`, `antibiotics.AMK`, ...),
    with `latest` resolved to the version it names today."""
    keys: dict[str, str] = {}
    for key, tag in lifecycle_plans.served_tags().items():
        try:
            keys[str(bentoml.models.get(tag).tag)] = key
        except bentoml.exceptions.NotFound:
            continue
    return keys


def stored_rows() -> list[dict[str, str]]:
    """Every stored model of every family: what `list` shows, one dict per tag."""
    names = sorted({model.tag.name for model in bentoml.models.list()})
    serving = serving_keys() if names else {}
    rows = []
    for recipe in RECIPES.values():
        for model in (m for name in names if recipe.matches(name) for m in stored_models(name)):
            meta = model.info.metadata
            tag = str(model.tag)
            rows.append(
                {
                    "tag": tag,
                    "family": recipe.family,
                    "serves": serving.get(tag, "-"),
                    "reference": str(meta.get("reference")),
                    "preprocessing": preprocessing_summary(meta) or "-",
                    "created": model.info.creation_time.isoformat(timespec="seconds"),
                }
            )
    return rows


def print_store(as_json: bool = False) -> None:
    rows = stored_rows()
    if as_json:
        show_json(rows)
        return
    if not rows:
        out.print(
            f"The model store ({bentoml_home()}) is empty.\n"
            "Build the reference models with `python save_models.py`, or import your own with "
            "`python save_models.py import NAME FILE`."
        )
        return
    table = Table(
        title=f"Models in the store ({bentoml_home()})",
        caption=f"serves: the family it answers for now ({lifecycle_state.state_path()})",
    )
    for column in rows[0]:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    show(table)


def declared_serving(args: argparse.Namespace) -> dict[str, Any]:
    """What the import command line says about serving the model (classes, preprocessing)."""
    declared: dict[str, Any] = {}
    if args.classes:
        declared["classes"] = args.classes.split(",")
    preprocessing = {
        key: getattr(args, key)
        for key in ("preset", "scale", "offset", "mean", "std", "channels")
        if getattr(args, key) is not None
    }
    if preprocessing:
        declared["preprocessing"] = preprocessing
    return declared


def import_source(
    model_name: str,
    source: str,
    declared: dict[str, Any],
    signature: str | None = None,
    baseline: Path | None = None,
) -> Outcome:
    """An MLflow URI or folder goes through MLflow; any other source is an artifact file or a
    SavedModel folder. What the command line declares overrides an MLflow model's metadata."""
    if is_mlflow_source(source):
        if baseline is not None:
            raise ImportRefused(
                "--baseline is for artifact files; an MLflow model's baseline comes from its "
                "first served requests"
            )
        return import_mlflow(source, model_name, declared=declared, signature=signature)
    return import_artifact(
        model_name, Path(source), declared=declared, signature=signature, baseline_data=baseline
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="save_models.py",
        description=__doc__.split("\n\n")[0],
        epilog="Model names: " + ", ".join(r.model_name for r in RECIPES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")
    reference = commands.add_parser(
        "reference", help="build the reference models that are missing (default)"
    )
    reference.add_argument(
        "selection",
        nargs="*",
        metavar="NAME",
        help="only these families or model names, e.g. heatflow or face_validator (default: all)",
    )
    imports = commands.add_parser("import", help="probe a user's artifact and store it")
    imports.add_argument("model_name", help="store name, e.g. heatflow_svr or modelo_CIP_NM")
    imports.add_argument(
        "source",
        help="artifact file (.joblib/.pkl, trusted only; .keras or .h5), a TensorFlow SavedModel "
        "folder, or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS, "
        "models:/NAME/STAGE, models:/NAME/latest, models:/MODEL_ID, runs:/RUN_ID/PATH, or a "
        "local MLflow model folder",
    )
    imports.add_argument(
        "--classes",
        help="class labels of a Keras classifier file, in output order (default S,I,R); "
        "MLflow models declare them in their MLmodel metadata",
    )
    images = imports.add_argument_group(
        "image preprocessing (flower_classifier, face_validator)",
        "Applied to 0-255 RGB pixels before the model: x = pixels * scale + offset, then "
        "(x - mean) / std per channel. By default: raw 0-255 if the model has Rescaling or "
        "Normalization layers, else pixels / 255. These override it.",
    )
    images.add_argument(
        "--preprocessing",
        dest="preset",
        choices=list(PRESETS),
        help="raw: 0-255; unit: / 255; tf: / 127.5 - 1; torch: / 255 then ImageNet mean/std; "
        "caffe: BGR minus the ImageNet mean (keras.applications' preprocess_input modes)",
    )
    images.add_argument("--scale", help="multiply the pixels, e.g. 1/255")
    images.add_argument("--offset", help="then add, e.g. -1")
    images.add_argument("--mean", help="then subtract per channel, e.g. 0.485,0.456,0.406")
    images.add_argument("--std", help="then divide per channel, e.g. 0.229,0.224,0.225")
    images.add_argument("--channels", choices=["RGB", "BGR"], help="colour order the model takes")
    imports.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE_OR_FOLDER",
        help="data like the training data, for drift monitoring: a CSV of values (heatflow) or "
        "feature vectors (antibiotics), a text file of one text per line (falsetrue), a folder "
        "of images (flowers). Without it, the first served requests make the baseline",
    )
    imports.add_argument(
        "--signature",
        help="serving signature of a TensorFlow SavedModel (default: serving_default)",
    )
    lists = commands.add_parser("list", help="list the models in the store")
    lists.add_argument("--json", action="store_true", help="as JSON, for scripts")
    promotes = commands.add_parser("promote", help="serve a stored tag for a family")
    promotes.add_argument("family", help="e.g. heatflow, face_validator or antibiotics.AMK")
    promotes.add_argument("tag", help="a stored tag, name:version (save_models.py list)")
    rollbacks = commands.add_parser("rollback", help="serve the previously served tag again")
    rollbacks.add_argument("family")
    canaries = commands.add_parser("canary", help="send a share of a family's requests to a tag")
    canaries.add_argument("family")
    canaries.add_argument("tag", help="the candidate's stored tag")
    canaries.add_argument("percent", type=float, help="share of requests in %%; 0 ends the canary")
    shadows = commands.add_parser("shadow", help="give a tag a copy of every request")
    shadows.add_argument("family")
    shadows.add_argument("tag", nargs="?", help="the candidate's stored tag; none ends the shadow")
    for changing in (promotes, rollbacks, canaries, shadows):
        changing.add_argument("--why", required=True, help="the reason, kept in the history")
    histories = commands.add_parser("history", help="the history of lifecycle changes")
    histories.add_argument("family", nargs="?", help="only this family")
    histories.add_argument("--json", action="store_true", help="as JSON, for scripts")
    syncs = commands.add_parser(
        "sync", help="import and serve what MLflow aliases name (families with mlflow_alias)"
    )
    syncs.add_argument("--why", default="", help="the reason (default: the alias and version)")
    backups = commands.add_parser("backup", help="export every stored model with a manifest")
    backups.add_argument("folder", type=Path, help="a new folder for this backup")
    restores = commands.add_parser("restore", help="verify a backup's sha256 sums, import it")
    restores.add_argument("folder", type=Path, help="a folder made by `backup`")
    return parser.parse_args(argv)


def run_backup_command(command: str, folder: Path) -> int:
    try:
        done = backup(folder) if command == "backup" else restore(folder)
    except BackupRefused as exc:
        err.print(f"[bold red]{command} refused:[/] {exc}")
        if command == "restore" and exc.left_in_store:
            left = ", ".join(exc.left_in_store)
            err.print(f"The model store still holds {left}: `bentoml models delete` them.")
        elif command == "restore":
            err.print("The model store is unchanged.")
        return 1
    table = Table(title=f"{command}: {folder}")
    for column in ("tag", "file", "action"):
        table.add_column(column, no_wrap=True)
    for item in done:
        table.add_row(item.tag, item.file, item.action)
    show(table)
    return 0


def change_lifecycle(args: argparse.Namespace) -> dict:
    if args.command == "promote":
        return commands.promote(args.family, args.tag, args.why)
    if args.command == "rollback":
        return commands.rollback(args.family, args.why)
    if args.command == "canary":
        return commands.set_canary(args.family, args.tag, args.percent, args.why)
    return commands.set_shadow(args.family, args.tag, args.why)


def print_history(entries: list[dict], as_json: bool = False) -> None:
    if as_json:
        show_json(entries)
        return
    if not entries:
        out.print(f"No lifecycle changes recorded in {lifecycle_state.history_path()}.")
        return
    table = Table(title=f"Lifecycle history ({lifecycle_state.history_path()})")
    keys = ("at", "who", "family", "action", "from", "to", "why")
    for column in keys:
        table.add_column(column, no_wrap=column != "why")
    for entry in entries:
        table.add_row(*(str(entry.get(key) or "-") for key in keys))
    show(table)


def run_sync(why: str) -> int:
    try:
        done = mlflow_sync.sync(why)
    except ImportError:
        err.print(
            "[bold red]sync needs MLflow:[/] "
            "pip install -r requirements-mlflow.txt -c constraints.txt"
        )
        return 1
    except ImportRefused as exc:
        err.print(f"[bold red]refused:[/] {exc}")
        return 1
    if not done:
        out.print("No family follows an MLflow alias (families.<name>.mlflow_alias).")
        return 0
    table = Table(title="MLflow alias sync")
    for column in ("family", "alias", "version", "tag", "action"):
        table.add_column(column, no_wrap=column != "action")
    for item in done:
        table.add_row(item.family, item.uri, item.version, item.tag or "-", item.action)
    show(table)
    return 1 if any(item.action.startswith("refused") for item in done) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in {"promote", "rollback", "canary", "shadow"}:
        try:
            line = change_lifecycle(args)
        except lifecycle_state.LifecycleRefused as exc:
            err.print(f"[bold red]{args.command} refused:[/] {exc}")
            return 1
        print_history([line])
        out.print(f"Recorded in {lifecycle_state.state_path()}; a running service follows it.")
        return 0
    if args.command == "history":
        print_history(lifecycle_state.history(args.family), args.json)
        return 0
    if args.command == "sync":
        return run_sync(args.why)
    if args.command in {"backup", "restore"}:
        return run_backup_command(args.command, args.folder)
    if args.command == "list":
        print_store(args.json)
        return 0
    if args.command == "import":
        prepare_tensorflow([r for r in RECIPES.values() if r.matches(args.model_name)])
        pinned = commands.pin_before_import(args.model_name)
        try:
            outcome = import_source(
                args.model_name, args.source, declared_serving(args), args.signature, args.baseline
            )
        except ImportRefused as exc:
            err.print(f"[bold red]import refused:[/] {exc}")
            err.print("The model store is unchanged.")
            return 1
        print_outcomes([outcome])
        first = commands.serve_if_first(args.model_name, outcome.tag)
        if first is not None:
            out.print(f"{first['family']} had no model: it now serves {outcome.tag}.")
        else:
            family = lifecycle_plans.family_of_model(args.model_name)
            served_now = lifecycle_plans.served_tags().get(family or "", "?")
            served = pinned["to"] if pinned else served_now
            out.print(
                f"{outcome.tag} is a candidate; still served: {served}. Serve it with "
                f"`python save_models.py promote {family} {outcome.tag} --why ...`."
            )
        return 0
    try:
        outcomes = build_missing_references(getattr(args, "selection", None))
    except ValueError as exc:
        err.print(f"[bold red]{exc}[/]")
        return 2
    print_outcomes(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
