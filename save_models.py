"""Put every model the service needs into the BentoML model store.

    python save_models.py                         build the reference models that are missing
    python save_models.py import NAME FILE        import your own artifact under a model name
    python save_models.py import NAME models:/NAME/VERSION | models:/NAME@ALIAS | MLFLOW_FOLDER
                                                  import a Keras model from MLflow (the registry
                                                  at $MLFLOW_TRACKING_URI, or a local folder)
    python save_models.py list                    show what the store holds

Reference models are small models trained on data the project generates or ships (their
metadata says `reference: true`); replace any of them by importing your own artifact. An
import is loaded and called on a probe input before it enters the store: if that fails, the
command exits with status 1 and the store is unchanged. The store lives in $BENTOML_HOME
(default ~/bentoml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bentoml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from despliegue.artifacts import stored_models
from despliegue.families import RECIPES
from despliegue.importing import ImportRefused, Outcome, ensure_reference, import_artifact
from despliegue.mlflow_import import import_mlflow, is_mlflow_source

console = Console(stderr=True)


def build_missing_references(families: list[str] | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for recipe in (RECIPES[family] for family in families or RECIPES):
            for name in recipe.references():
                task = progress.add_task(f"{name}: {recipe.description}", total=None)
                outcomes.append(ensure_reference(recipe, name))
                progress.remove_task(task)
    return outcomes


def print_outcomes(outcomes: list[Outcome]) -> None:
    table = Table(title="Model store")
    for column in ("model", "tag", "action", "detail"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(outcome.model_name, outcome.tag, outcome.action, outcome.detail)
    console.print(table)
    if all(outcome.action == "kept" for outcome in outcomes):
        console.print("Nothing to do: every model is already in the store.")
    for outcome in outcomes:
        if outcome.warning:
            console.print(f"[bold yellow]warning:[/] {outcome.warning}")


def print_store() -> None:
    table = Table(title="Models in the store")
    for column in ("tag", "family", "reference", "created"):
        table.add_column(column)
    names = sorted({model.tag.name for model in bentoml.models.list()})
    for recipe in RECIPES.values():
        for model in (m for name in names if recipe.matches(name) for m in stored_models(name)):
            meta = model.info.metadata
            created = model.info.creation_time.isoformat(timespec="seconds")
            table.add_row(str(model.tag), recipe.family, str(meta.get("reference")), created)
    console.print(table)


def import_source(model_name: str, source: str, classes: str | None) -> Outcome:
    """An MLflow URI or folder goes through MLflow; any other source is an artifact file."""
    if is_mlflow_source(source):
        return import_mlflow(source, model_name)
    declared = {"classes": classes.split(",")} if classes else None
    return import_artifact(model_name, Path(source), declared=declared)


def family_name(value: str) -> str:
    if value not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown family {value!r}; known: {', '.join(RECIPES)}")
    return value


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
        "families", nargs="*", type=family_name, help="only these families (default: all)"
    )
    imports = commands.add_parser("import", help="probe a user's artifact and store it")
    imports.add_argument("model_name", help="store name, e.g. heatflow_svr or modelo_CIP_NM")
    imports.add_argument(
        "source",
        help="artifact file (.joblib/.pkl, trusted only; .keras), or an MLflow model: "
        "models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH, or a local MLflow folder",
    )
    imports.add_argument(
        "--classes",
        help="class labels of a Keras classifier file, in output order (default S,I,R); "
        "MLflow models declare them in their MLmodel metadata",
    )
    commands.add_parser("list", help="list the models in the store")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        print_store()
        return 0
    if args.command == "import":
        try:
            outcome = import_source(args.model_name, args.source, args.classes)
        except ImportRefused as exc:
            console.print(f"[bold red]import refused:[/] {exc}")
            console.print("The model store is unchanged.")
            return 1
        print_outcomes([outcome])
        return 0
    print_outcomes(build_missing_references(getattr(args, "families", None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
