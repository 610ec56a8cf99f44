"""`python -m despliegue.batch FAMILY INPUT -o OUTPUT`: score many items offline.

Bad input (a missing path, an empty table, a missing column, an unknown family, an output that
is neither .parquet nor .csv) is one line on stderr and exit 1, before any model loads and
before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from despliegue import registry
from despliegue.batch.families import columns_of
from despliegue.batch.inputs import BadInput, open_source
from despliegue.batch.output import ResumableOutput
from despliegue.batch.scoring import best_batch, cores, load_runner, run, scorer_of


def items_per_second(speed: float | None) -> str:
    return "    … items/s" if speed is None else f"{speed:7.1f} items/s"


def parser() -> argparse.ArgumentParser:
    families = [f.name for f in registry.FAMILIES if f.batch]
    command = argparse.ArgumentParser(
        prog="python -m despliegue.batch",
        description="Score a folder of images or a table of items with a family's model, one "
        "output row per item (the API's answer fields, or why the item was refused). Rerun "
        "with the same output to score only what is missing.",
    )
    command.add_argument("family", help=f"one of: {', '.join(families)}")
    command.add_argument(
        "input",
        type=Path,
        help="a folder of images (read recursively), a .csv/.parquet table, or a text file "
        "with one item a line",
    )
    command.add_argument("-o", "--output", type=Path, required=True, help="a .parquet or .csv file")
    command.add_argument("--column", help="the table column to score (default: the API's field)")
    command.add_argument(
        "--model", help="a stored model TAG to answer instead of the served one (a candidate)"
    )
    command.add_argument(
        "--batch-size", type=int, help="items per model call (default: the runner's)"
    )
    command.add_argument("--top-k", type=int, default=3, help="flowers: classes listed per image")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    return command


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    try:
        scorer = scorer_of(arguments.family)
        source = open_source(arguments.input, scorer.reads, arguments.column, scorer.column)
        output = ResumableOutput(arguments.output, columns_of(scorer))
        if arguments.batch_size is not None and arguments.batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        runner = load_runner(arguments.family, arguments.model)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    batch_size = arguments.batch_size or best_batch(arguments.family)
    options = {"top_k": arguments.top_k}
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class ItemsPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(items_per_second(task.speed))

    with Progress(
        TextColumn(f"{arguments.family}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        ItemsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=arguments.no_progress,
        transient=False,
    ) as progress:
        task = progress.add_task("scoring", total=source.total)
        summary = run(
            arguments.family,
            source,
            output,
            runner,
            batch_size,
            options,
            advance=lambda n: progress.advance(task, n),
        )
    print(
        f"{summary.scored} scored, {summary.refused} refused, {summary.skipped} already in "
        f"{arguments.output} ({summary.rows} rows); batch {batch_size}, {cores()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
