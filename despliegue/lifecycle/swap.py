"""In each runner process: the loaded models of the families it serves, and the hot swap.

`ServedModels` holds them. A thread looks at the state file's modification stamp every
`poll_interval_s`; when it changes, the models the new plans name are loaded beside the old
ones, then one assignment swaps the set a batch sees, so a batch runs entirely on one model and
no request waits for a load. The old models are then released. Each batch goes to the canary
with the configured probability (the unit of routing is one runner batch: requests merged into
it share its model), every answer item carries the tag of the model that produced it
(`Answered`), and the shadow model, if any, gets a copy of the batch on a thread of its own, off
the response path, its answers compared by the model's comparison (despliegue/registry.py).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from despliegue.artifacts import load_artifact, model_card, stored_model
from despliegue.config import settings
from despliegue.contracts import Answered, ModelCard, RunnerModels, ShadowStats
from despliegue.heap import release_unreachable
from despliegue.lifecycle import comparisons
from despliegue.lifecycle.metrics import (
    runner_calls,
    runner_seconds,
    shadow_agreed,
    shadow_compared,
    shadow_difference,
)
from despliegue.lifecycle.pinning import NotLoaded, runner_pin
from despliegue.lifecycle.plans import Plan, plans, resolve
from despliegue.lifecycle.state import state_stamp
from despliegue.startup import stop_server_on_failure

logger = logging.getLogger("despliegue.lifecycle")
# BentoML's server logging leaves the root logger at WARNING; a swap is worth a line.
logger.setLevel(logging.INFO)


@dataclass(frozen=True)
class Loaded:
    tag: str
    model: Any
    card: ModelCard


@dataclass(frozen=True)
class FamilyModels:
    """What one family's batches see: swapped as a whole, never edited."""

    plan: Plan
    served: Loaded
    canary: Loaded | None
    shadow: Loaded | None

    def lanes(self) -> list[tuple[str, Loaded]]:
        return [
            (lane, loaded)
            for lane, loaded in (
                ("served", self.served),
                ("canary", self.canary),
                ("shadow", self.shadow),
            )
            if loaded is not None
        ]


@dataclass
class _Comparison:
    served: str
    shadow: str
    compared: int = 0
    agreed: int = 0
    difference_sum: float = 0.0
    dropped: int = 0


@dataclass
class ServedModels:
    """The models one runner process serves, kept in step with the state file.

    `prepare(stored model) -> callable thing` is the runner's own loading step (e.g. a
    compiled TensorFlow graph); everything else is the same for every family.
    """

    runner: str
    prepare: Callable[[Any, ModelCard], Any] = lambda model, card: model
    families: dict[str, FamilyModels] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    stamp: str = ""
    # Set by `pin`: the state file is no longer followed.
    pinned: bool = False

    def __post_init__(self) -> None:
        self.stamp = state_stamp()
        self.families = self._load(plans(self.runner), strict=True)
        self._comparisons: dict[str, _Comparison] = {}
        self._comparisons_lock = threading.Lock()
        # One shadow thread: a shadow never takes more than one core from serving.
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._shadow_busy = threading.Semaphore(2)
        interval = settings().lifecycle.poll_interval_s
        threading.Thread(target=self._watch, args=(interval,), daemon=True).start()

    # Loading ---------------------------------------------------------------------------------

    def _loaded(self, tag: str, reuse: dict[str, Loaded]) -> Loaded:
        if tag in reuse:
            return reuse[tag]
        stored = stored_model(tag)  # missing or unreadable: says what to do
        card = model_card(stored)
        return Loaded(str(stored.tag), self.prepare(load_artifact(stored), card), card)

    def _load(self, wanted: dict[str, Plan], strict: bool = False) -> dict[str, FamilyModels]:
        """Load what the plans name, reusing models already loaded. A served model that
        cannot load fails start-up (`strict`) or keeps the family on its current models."""
        reuse = {
            loaded.tag: loaded
            for models in self.families.values()
            for loaded in (models.served, models.canary, models.shadow)
            if loaded
        }
        result: dict[str, FamilyModels] = {}
        problems: dict[str, str] = {}
        for family, plan in wanted.items():
            try:
                if strict:  # at start-up: a served model that cannot load stops the server
                    with stop_server_on_failure(f"model {plan.served}"):
                        served = self._loaded(plan.served, reuse)
                else:
                    served = self._loaded(plan.served, reuse)
            except Exception as exc:
                if strict:
                    raise
                problems[family] = f"cannot load {plan.served}: {exc}"
                logger.error("%s: keeps its models: %s", family, problems[family])
                if family in self.families:
                    result[family] = self.families[family]
                continue
            optional: dict[str, Loaded | None] = {"canary": None, "shadow": None}
            for lane, tag in (("canary", plan.canary), ("shadow", plan.shadow)):
                if not tag:
                    continue
                try:
                    optional[lane] = self._loaded(resolve(tag), reuse)
                except Exception as exc:
                    problems[family] = f"{lane} {tag} not loaded: {exc}"
                    logger.error("%s: %s", family, problems[family])
            result[family] = FamilyModels(plan, served, optional["canary"], optional["shadow"])
        self.problems = problems
        return result

    def _watch(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            stamp = state_stamp()
            if self.pinned or stamp == self.stamp:
                continue
            try:
                self.reload(stamp)
            except Exception:
                logger.exception("%s: the new lifecycle state was not applied", self.runner)
                self.stamp = stamp

    def reload(self, stamp: str) -> None:
        """Load the new state's models beside the current ones, swap, release the old."""
        wanted = plans(self.runner)
        if wanted == {family: models.plan for family, models in self.families.items()}:
            self.stamp = stamp  # another runner's families changed
            return
        before = {f: m.served.tag for f, m in self.families.items()}
        loaded_before = self._loaded_tags()
        self.families = self._load(wanted)  # the swap: the next batch sees the new set
        self.stamp = stamp
        for family, models in self.families.items():
            if before.get(family) != models.served.tag:
                logger.info(
                    "%s: now serving %s (was %s)", family, models.served.tag, before.get(family)
                )
        if loaded_before - self._loaded_tags():
            release_unreachable()  # the replaced models' memory, now that no batch uses them

    def pin(self, tags: dict[str, str]) -> None:
        """Answer with exactly these stored models (tag by family key), no canary, no shadow,
        and stop following the state file: batch scoring names the one model that answers
        every item of a run (the served one, or a candidate it is asked to compare)."""
        self.pinned = True
        reuse = {f: m.served for f, m in self.families.items()}
        pinned = {}
        for family, models in self.families.items():
            tag = resolve(tags.get(family, models.served.tag))
            served = reuse[family] if reuse[family].tag == tag else self._loaded(tag, {})
            plan = replace(models.plan, served=tag, canary=None, percent=0.0, shadow=None)
            pinned[family] = FamilyModels(plan, served, None, None)
        self.families = pinned

    def _loaded_tags(self) -> set[str]:
        return {loaded.tag for models in self.families.values() for _, loaded in models.lanes()}

    # Serving ---------------------------------------------------------------------------------

    def model(self, family: str) -> FamilyModels:
        return self.families[family]

    def answer(
        self, family: str, batch: Any, call: Callable[[Any, Any], Sequence[Any]]
    ) -> list[Answered]:
        """`call(model, batch)` on the family's served model, or its canary for this share of
        batches; each answer tagged; the shadow gets the batch afterwards, on its own thread.
        A call pinned to a loaded tag (despliegue/lifecycle/pinning.py) is answered by that
        model alone."""
        models = self.families[family]  # one snapshot for the whole batch
        chosen = models.served
        lane = "served"
        pin = runner_pin()
        if pin is not None:
            lane, chosen = next(
                ((lane, loaded) for lane, loaded in models.lanes() if loaded.tag == pin),
                (None, None),
            )
            if chosen is None:
                loaded = ", ".join(loaded.tag for _, loaded in models.lanes())
                raise NotLoaded(f"{pin} is not loaded for {family} (loaded: {loaded})")
        elif models.canary is not None and random.uniform(0, 100) < models.plan.percent:
            chosen, lane = models.canary, "canary"
        started = time.perf_counter()
        try:
            outputs = call(chosen.model, batch)
        except Exception:
            runner_calls().labels(family, chosen.tag, lane, "error").inc()
            raise
        runner_seconds().labels(family, chosen.tag, lane).observe(time.perf_counter() - started)
        runner_calls().labels(family, chosen.tag, lane, "ok").inc()
        if models.shadow is not None and lane == "served" and pin is None:
            self._shadow(family, models.served.tag, models.shadow, batch, outputs, call)
        return [Answered(chosen.tag, output) for output in outputs]

    def _shadow(
        self,
        family: str,
        served_tag: str,
        shadow: Loaded,
        batch: Any,
        outputs: Sequence[Any],
        call: Callable[[Any, Any], Sequence[Any]],
    ) -> None:
        comparison = self._comparison(family, served_tag, shadow.tag)
        if not self._shadow_busy.acquire(blocking=False):
            comparison.dropped += 1  # never queue without bound behind a slow shadow
            return

        compare = comparisons.comparison(family)

        def run() -> None:
            try:
                theirs = call(shadow.model, batch)
                results = [compare(a, b) for a, b in zip(outputs, theirs, strict=True)]
            except Exception:
                logger.exception("%s: shadow %s failed on a batch", family, shadow.tag)
                runner_calls().labels(family, shadow.tag, "shadow", "error").inc()
                return
            finally:
                self._shadow_busy.release()
            agreed = sum(1 for same, _ in results if same)
            difference = sum(d for _, d in results if not np.isnan(d))
            with self._comparisons_lock:
                comparison.compared += len(results)
                comparison.agreed += agreed
                comparison.difference_sum += difference
            labels = (family, served_tag, shadow.tag)
            shadow_compared().labels(*labels).inc(len(results))
            shadow_agreed().labels(*labels).inc(agreed)
            shadow_difference().labels(*labels).inc(difference)

        self._shadow_pool.submit(run)

    def _comparison(self, family: str, served: str, shadow: str) -> _Comparison:
        with self._comparisons_lock:
            current = self._comparisons.get(family)
            if current is None or (current.served, current.shadow) != (served, shadow):
                current = self._comparisons[family] = _Comparison(served, shadow)
            return current

    def describe(self) -> RunnerModels:
        cards, lanes, shadow = [], {}, {}
        for family, models in self.families.items():
            for lane, loaded in models.lanes():
                cards.append(loaded.card.model_copy(update={"serves": family, "lane": lane}))
            lanes[family] = {
                "served": models.served.tag,
                "canary": models.canary.tag if models.canary else None,
                "percent": models.plan.percent if models.canary else 0.0,
                "shadow": models.shadow.tag if models.shadow else None,
            }
            stats = ShadowStats(
                family=family, served=models.served.tag, shadow=lanes[family]["shadow"]
            )
            current = self._comparisons.get(family)
            if current is not None and models.shadow and current.shadow == models.shadow.tag:
                stats.compared, stats.agreed = current.compared, current.agreed
                stats.dropped_batches = current.dropped
                if current.compared:
                    stats.agreement_rate = round(current.agreed / current.compared, 4)
                    stats.mean_absolute_difference = current.difference_sum / current.compared
            shadow[family] = stats
        return RunnerModels(
            state_stamp=self.stamp,
            cards=cards,
            lanes=lanes,
            problems=self.problems,
            shadow=shadow,
        )
