"""Capture: the runner calls the service makes are wrapped once (`observed`); after each answered
call, the model's summary function (named by its registry entry) turns inputs and answers into
per-item summaries, and the recorder counts them into the answering model's window. Also the
drift families and the report of one (`GET /drift/{family}`). Runs in the API worker.

Why not `bentoml.monitor`: it logs every input and output of every call to files (raw inputs,
which the audit log's privacy rule keeps out of any file unless an operator opts in), and
leaves statistics to an external system. Counting in process costs a few microseconds per call
and keeps nothing personal.
"""

from __future__ import annotations

import functools
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


def observed(
    name: str, call: Callable[[Any], Awaitable[Any]], cards_of: CardsOf, recorder: Recorder
) -> Callable[[Any], Awaitable[Any]]:
    """`call` (a runner method as the service calls it), recording each answered call.

    Monitoring never fails a request: a summary that cannot be taken is logged and skipped.
    """
    if not recorder.settings.capture:
        return call
    entry = monitored_methods()[name]

    async def recorded(items: Any) -> Any:
        answers = await call(items)
        try:
            # Each answer item names the model that gave it (despliegue/lifecycle/swap.py: served,
            # canary): each model's share of the call is summarised against its own baseline.
            cards = {card.tag: card for card in await cards_of(entry.runner)}
            shares: dict[str, list[int]] = {}
            for index, answered in enumerate(answers):
                shares.setdefault(answered.model_tag, []).append(index)
            for tag, indices in shares.items():
                card = cards.get(tag)
                if card is None:  # a model swapped out while this call ran: not monitored
                    continue
                share = [items[i] for i in indices]
                answered = [answers[i].answer for i in indices]
                for _, family, summary, outputs in entry.summarise(share, answered, [card]):
                    recorder.record(family, tag, summary, outputs, card.metadata.get("baseline"))
        except Exception:
            log.exception("drift capture of a %s call failed", name)
        return answers

    return recorded


async def family_report(family: str, cards_of: CardsOf, recorder: Recorder) -> dict[str, Any]:
    """`GET /drift/{family}`: every served model of the family against its baseline."""
    cards = [card for runner in runners_of(family) for card in await cards_of(runner)]
    return recorder.report(family, {card.tag: card.metadata.get("baseline") for card in cards})
