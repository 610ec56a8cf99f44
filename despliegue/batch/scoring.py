"""The batch loop: load the family's runner in this process, then prepare, answer and write
one batch at a time.

The runner is the class the server runs (`runners/<family>.py`, from the registry), created
in this process and pinned to one model per family key (the served one, or `--model TAG`), so
every row of a run names the model that answered it. Items are prepared (images decoded) on a
thread per core while the model answers the batch before: at most two batches of items are in
memory, whatever the size of the input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from despliegue import registry
from despliegue.artifacts import ModelMissing, ModelUnusable
from despliegue.batch.families import ItemRefused, Row, Scorer, refusal
from despliegue.batch.inputs import BadInput, Source
from despliegue.batch.output import ResumableOutput
from despliegue.config import settings
from despliegue.lifecycle.plans import family_of_model
from despliegue.tensorflow_runtime import use_cores


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def scorer_of(family_name: str) -> Scorer:
    """The family's batch scorer, as its registry entry names it; BadInput for an unknown one."""
    try:
        entry = registry.family(family_name)
    except KeyError as exc:
        raise BadInput(str(exc.args[0])) from None
    if not entry.batch:
        raise BadInput(f"family {family_name!r} has no batch scoring")
    return registry.imported(entry.batch)


def best_batch(family_name: str) -> int:
    """The runner's own largest batch for its first model (configuration.yaml `batching`)."""
    first = registry.family(family_name).models[0].key
    return settings().families[first].batching.max_batch_size


def load_runner(family_name: str, model: str | None = None) -> Any:
    """The family's runner, created in this process, pinned to the served models or, for the
    family key `model` serves, to that stored model."""
    entry = registry.family(family_name)
    pins: dict[str, str] = {}
    if model:
        key = family_of_model(model.partition(":")[0])
        if key is None or registry.family_of(key).name != family_name:
            raise BadInput(f"{model} is not a model of family {family_name!r}")
        pins[key] = model
    use_cores(cores())  # this process serves no one else: every core it was given
    runner = entry.runner_class().inner()
    if model and key not in runner.models.families:
        raise BadInput(
            f"{model}: {key} is not served; a candidate answers in a served model's place"
        )
    try:
        runner.models.pin(pins)
    except (ModelMissing, ModelUnusable) as exc:
        raise BadInput(str(exc).splitlines()[0]) from None
    return runner


@dataclass
class Prepared:
    names: list[str]
    values: list[Any]
    rows: dict[int, Row]  # refused items, by position in the batch


def prepare(
    scorer: Scorer, runner: Any, batch: list[tuple[str, Any]], pool: ThreadPoolExecutor
) -> Prepared:
    """The batch's items ready for the model, each on a thread of `pool` (Pillow decodes with
    the GIL released); an item the API would refuse becomes its error row."""

    def one(raw: Any) -> Any:
        try:
            return scorer.prepare(runner, raw)
        except ItemRefused as exc:
            return exc
        except Exception as exc:  # anything else one item does is still that item's row
            return refusal(exc)

    prepared = list(pool.map(one, [raw for _, raw in batch]))
    rows = {i: {"error": str(v)} for i, v in enumerate(prepared) if isinstance(v, ItemRefused)}
    values = [v for v in prepared if not isinstance(v, ItemRefused)]
    return Prepared([name for name, _ in batch], values, rows)


def answered(scorer: Scorer, runner: Any, batch: Prepared, options: dict[str, Any]) -> list[Row]:
    """One row per item of the batch, in order: its answer, or why it was refused."""
    answers = iter(scorer.answer(runner, batch.values, options) if batch.values else [])
    rows = []
    for position, name in enumerate(batch.names):
        row = batch.rows.get(position) or next(answers)
        rows.append({"item": name, **row})
    return rows


def batches(items: Iterable[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass(frozen=True)
class Summary:
    scored: int
    refused: int
    skipped: int
    rows: int


def run(
    family_name: str,
    source: Source,
    output: ResumableOutput,
    runner: Any,
    batch_size: int,
    options: dict[str, Any],
    advance: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Score every item of `source` not already in `output`, batch by batch, then finish the
    output. `advance(n)` is told of every n items done (the progress bar)."""
    scorer = scorer_of(family_name)
    done = output.done()
    if done:
        advance(sum(1 for name, _ in source.items() if name in done))
    todo = ((name, raw) for name, raw in source.items() if name not in done)
    scored = refused = 0

    def write(batch: Prepared) -> None:
        nonlocal scored, refused
        rows = answered(scorer, runner, batch, options)
        output.write(rows)
        refused += sum(1 for row in rows if row.get("error"))
        scored += len(rows)
        advance(len(rows))

    # One thread prepares the next batch (on a thread per core) while the model answers this one.
    with (
        ThreadPoolExecutor(cores(), thread_name_prefix="prepare") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="lookahead") as lookahead,
    ):
        upcoming: Future[Prepared] | None = None
        for batch in batches(todo, batch_size):
            current = upcoming
            upcoming = lookahead.submit(prepare, scorer, runner, batch, pool)
            if current is not None:
                write(current.result())
        if upcoming is not None:
            write(upcoming.result())
    return Summary(scored - refused, refused, len(done), output.finish())
