"""Capture: the runner calls the service makes are wrapped once (`observed`); answered calls are
kept, and a few times a second, after their answers have left, the model's summary function
(named by its registry entry) turns their inputs and answers into per-item summaries, and the
recorder counts them into the answering model's window. Also the
drift families and the report of one (`GET /drift/{family}`). Runs in the API worker.

Why not `bentoml.monitor`: it logs every input and output of every call to files (raw inputs,
which the audit log's privacy rule keeps out of any file unless an operator opts in), and
leaves statistics to an external system. Counting in process, in batches, costs microseconds
per call and keeps nothing personal.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentoml import server_context

from despliegue import registry
from despliegue.bentoml_compat import bentoml_home
from despliegue.config import DriftSettings
from despliegue.drift.recorder import Recorder
from despliegue.drift.summaries import Summariser

log = logging.getLogger("despliegue.drift")


@dataclass(frozen=True)
class Monitored:
    """A runner method whose calls are captured: the runner attribute holding its model cards,
    and the function summarising a call."""

    family: str
    runner: str
    summarise: Summariser


def families() -> tuple[str, ...]:
    """The families whose traffic is monitored, as `/drift/{family}` names them: every family
    of the registry."""
    return tuple(family.name for family in registry.FAMILIES)


@functools.cache
def monitored_methods() -> dict[str, Monitored]:
    """One entry per batchable runner method the service calls (by model key, its coalescer's
    name there), derived from the registry (its summary function imported)."""
    return {
        model.key: Monitored(family.name, family.name, model.part("summarise"))
        for family in registry.FAMILIES
        for model in family.models
    }


def runners_of(family: str) -> list[str]:
    """The runner attributes whose models a drift family covers."""
    return [family] if family in families() else []


def worker_name() -> str:
    """This API worker's index (stable across restarts, unlike its pid)."""
    return str(server_context.worker_index or 1)


def storage_dir(settings: DriftSettings) -> Path:
    if settings.storage_dir:
        return Path(settings.storage_dir)
    return Path(bentoml_home()) / "drift"


CardsOf = Callable[[str], Awaitable[Sequence[Any]]]


# Answered calls wait this long, at most, before they are counted: the counting runs once for
# all the calls of that time, after their answers have left.
FLUSH_INTERVAL_S = 0.2


def observed(
    name: str, call: Callable[[Any], Awaitable[Any]], cards_of: CardsOf, recorder: Recorder
) -> Callable[[Any], Awaitable[Any]]:
    """`call` (a runner method as the service calls it), each answered call kept for counting.

    The request only appends its call to the recorder's pending list; every FLUSH_INTERVAL_S
    (and before a drift report is read or the windows are saved) `count_pending` summarises
    the calls of that time together, one summary per method and model (numpy over every item
    of them instead of Python per call), and counts them into the windows. Monitoring never
    fails a request: a summary that cannot be taken is logged and skipped.
    """
    if not recorder.settings.capture:
        return call
    monitored_methods()[name]  # a method the registry does not know fails here, at start-up

    async def recorded(items: Any) -> Any:
        answers = await call(items)
        recorder.pending.append((name, items, answers))
        if len(recorder.pending) == 1:
            loop = asyncio.get_running_loop()
            loop.call_later(FLUSH_INTERVAL_S, _start_counting, loop, cards_of, recorder)
        return answers

    return recorded


_COUNTING: set[asyncio.Task[None]] = set()  # running counts, kept until done (asyncio's advice)


def _start_counting(loop: asyncio.AbstractEventLoop, cards_of: CardsOf, recorder: Recorder) -> None:
    task = loop.create_task(count_pending(cards_of, recorder))
    _COUNTING.add(task)
    task.add_done_callback(_COUNTING.discard)


async def count_pending(cards_of: CardsOf, recorder: Recorder) -> None:
    """Count every pending call into its model's window (the only way calls enter one). Two
    counts (the timer's and a /drift report's) never interleave: the second waits, then
    counts what was answered meanwhile."""
    async with recorder.counting:
        calls, recorder.pending = recorder.pending, []
        # Consecutive calls of one method are summarised together, in the order they answered.
        for name, group in itertools.groupby(calls, key=lambda call: call[0]):
            items: list[Any] = []
            answers: list[Any] = []
            for _, call_items, call_answers in group:
                items.extend(call_items)
                answers.extend(call_answers)
            try:
                await _count(monitored_methods()[name], items, answers, cards_of, recorder)
            except Exception:
                log.exception("drift capture of %s calls failed", name)


async def _count(
    entry: Monitored, items: list[Any], answers: list[Any], cards_of: CardsOf, recorder: Recorder
) -> None:
    # Each answer item names the model that gave it (despliegue/lifecycle/swap.py: served,
    # canary): each model's share is summarised against its own baseline.
    cards = {card.tag: card for card in await cards_of(entry.runner)}
    shares: dict[str, list[int]] = {}
    for index, answered in enumerate(answers):
        shares.setdefault(answered.model_tag, []).append(index)
    for tag, indices in shares.items():
        card = cards.get(tag)
        if card is None:  # a model swapped out since these calls: not monitored
            continue
        share = [items[i] for i in indices]
        answered = [answers[i].answer for i in indices]
        for _, family, summary, outputs in entry.summarise(share, answered, [card]):
            recorder.record(family, tag, summary, outputs, card.metadata.get("baseline"))


async def family_report(family: str, cards_of: CardsOf, recorder: Recorder) -> dict[str, Any]:
    """`GET /drift/{family}`: every served model of the family against its baseline (the
    calls answered so far counted first)."""
    await count_pending(cards_of, recorder)
    cards = [card for runner in runners_of(family) for card in await cards_of(runner)]
    return recorder.report(family, {card.tag: card.metadata.get("baseline") for card in cards})
