"""Put every model the service needs into the BentoML model store.

    python save_models.py                         build the reference models that are missing
    python save_models.py reference [NAME ...]    the same, for some model names only
    python save_models.py import NAME FILE        import your own artifact under a model name
    python save_models.py list                    show what the store holds
    python save_models.py backup DIR              export the served models + sha256 manifest
    python save_models.py restore DIR             verify a backup, then import it

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

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from despliegue.artifacts import stored_models
from despliegue.backup import BackupRefused, backup, restore
from despliegue.families import RECIPES
from despliegue.importing import ImportRefused, Outcome, ensure_reference, import_artifact

console = Console(stderr=True)


def build_missing_references(names: list[str] | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    recipes = [r for r in RECIPES.values() if not names or r.model_name in names]
    with Progress(*columns, console=console, transient=True) as progress:
        for recipe in recipes:
            task = progress.add_task(f"{recipe.model_name}: {recipe.description}", total=None)
            outcomes.append(ensure_reference(recipe))
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
    for recipe in RECIPES.values():
        for model in stored_models(recipe.model_name):
            meta = model.info.metadata
            created = model.info.creation_time.isoformat(timespec="seconds")
            table.add_row(str(model.tag), recipe.family, str(meta.get("reference")), created)
    console.print(table)


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
        "names",
        nargs="*",
        metavar="NAME",
        help="only these model names (default: all)",
    )
    imports = commands.add_parser("import", help="probe a user's artifact and store it")
    imports.add_argument("model_name", help="store name, e.g. heatflow_svr")
    imports.add_argument(
        "path",
        type=Path,
        help="artifact file: .joblib or .pkl (trusted only) for sklearn models, "
        ".keras or .h5 for Keras models",
    )
    commands.add_parser("list", help="list the models in the store")
    backups = commands.add_parser("backup", help="export the served models with a manifest")
    backups.add_argument("folder", type=Path, help="a new folder for this backup")
    restores = commands.add_parser("restore", help="verify a backup's sha256 sums, import it")
    restores.add_argument("folder", type=Path, help="a folder made by `backup`")
    return parser.parse_args(argv)


def run_backup_command(command: str, folder: Path) -> int:
    try:
        done = backup(folder) if command == "backup" else restore(folder)
    except BackupRefused as exc:
        console.print(f"[bold red]{command} refused:[/] {exc}")
        if command == "restore":
            console.print("The model store is unchanged.")
        return 1
    table = Table(title=f"{command}: {folder}")
    for column in ("tag", "file", "action"):
        table.add_column(column)
    for item in done:
        table.add_row(item.tag, item.file, item.action)
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in {"backup", "restore"}:
        return run_backup_command(args.command, args.folder)
    if args.command == "list":
        print_store()
        return 0
    if args.command == "import":
        try:
            outcome = import_artifact(args.model_name, args.path)
        except ImportRefused as exc:
            console.print(f"[bold red]import refused:[/] {exc}")
            console.print("The model store is unchanged.")
            return 1
        print_outcomes([outcome])
        return 0
    names = getattr(args, "names", None) or []
    unknown = sorted(set(names) - {r.model_name for r in RECIPES.values()})
    if unknown:
        console.print(f"[bold red]unknown model names:[/] {', '.join(unknown)}")
        return 2
    print_outcomes(build_missing_references(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
