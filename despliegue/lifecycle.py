"""Model lifecycle: what each family serves, changed without a restart.

An import only adds a *candidate* to the model store. What a family serves is an explicit
choice recorded in one small JSON state file (`lifecycle.state_file`, `served.json` in the
project folder by default, so `bentoml build` and the image carry it):

    {"families": {"heatflow": {"served": "heatflow_svr:v2", "previous": "heatflow_svr:v1",
                               "canary": {"tag": "heatflow_svr:v3", "percent": 20},
                               "shadow": "heatflow_svr:v4"}}}

A family with no entry serves what configuration.yaml names (`version: latest` resolved in
the store), as before. Every change appends one audit line (who, when, from -> to, why) to
`<state>-history.jsonl` beside it; `save_models.py promote | rollback | canary | shadow | sync
| history` are the commands.

Families here are configuration keys: `heatflow`, `falsetrue`, `flowers`, `face_detector`,
`face_validator`, and one `antibiotics.<CODE>` per antibiotic of the panel (a new antibiotic
joins the panel by being promoted).

In each runner process, `ServedModels` holds the loaded models of the families that runner
serves. A thread looks at the state file's modification stamp every `poll_interval_s`; when it
changes, the models the new state names are loaded beside the old ones, then one assignment
swaps the set a batch sees, so a batch runs entirely on one model and no request waits for a
load. The old models are then released. Each batch goes to the canary with the configured
probability (the unit of routing is one runner batch: requests merged into it share its
model), every answer item carries the tag of the model that produced it (`Answered`), and the
shadow model, if any, gets a copy of the batch on a thread of its own, off the response path.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from despliegue import registry
from despliegue.artifacts import (
    load_artifact,
    model_card,
    panel_models,
    stored_model,
    stored_models,
)
from despliegue.config import PROJECT_ROOT, Canary, FamilyConfig, PanelConfig, settings
from despliegue.contracts import ModelCard
from despliegue.startup import stop_server_on_failure

logger = logging.getLogger("despliegue.lifecycle")
# BentoML's server logging leaves the root logger at WARNING; a swap is worth a line.
logger.setLevel(logging.INFO)

STATE_ENV = "DESPLIEGUE_LIFECYCLE_STATE"
FROM_STATE = "state file"
FROM_CONFIGURATION = "configuration"


# --- How a shadow's answers are compared (the registry names one per model) ----------------


def same_value(served: Any, other: Any) -> tuple[bool, float]:
    """A regression answer: agreement within 5 % (or 0.5 units near zero)."""
    a, b = float(served), float(other)
    return abs(a - b) <= max(0.5, 0.05 * abs(a)), abs(a - b)


def same_label(served: Any, other: Any) -> tuple[bool, float]:
    """(label, probability) rows: the label agrees; the difference is in the probability."""
    a, b = np.asarray(served, dtype=float), np.asarray(other, dtype=float)
    difference = abs(a[1] - b[1]) if not (np.isnan(a[1]) or np.isnan(b[1])) else 0.0
    return bool(a[0] == b[0]), float(difference)


def same_class(served: Any, other: Any) -> tuple[bool, float]:
    """Class probabilities: the top class agrees; the mean absolute difference per class."""
    a, b = np.asarray(served, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape:
        return False, float("nan")
    return bool(np.argmax(a) == np.argmax(b)), float(np.mean(np.abs(a - b)))


def same_faces(served: Any, other: Any) -> tuple[bool, float]:
    """Detections: the same number of faces; the difference in that number."""
    a, b = len(np.asarray(served)), len(np.asarray(other))
    return a == b, float(abs(a - b))


def same_verdict(served: Any, other: Any) -> tuple[bool, float]:
    """A score against the family's threshold: the same side of it agrees."""
    threshold = float(settings().family("face_validator").threshold or 0.5)
    a, b = float(served), float(other)
    return (a >= threshold) == (b >= threshold), abs(a - b)


Comparison = Callable[[Any, Any], tuple[bool, float]]


@dataclass(frozen=True)
class FamilyFacts:
    """What lifecycle needs to know about one configuration key (from its registry entry)."""

    runner: str  # the runner serving it: its attribute name in service.py
    compare: Comparison  # how a shadow's answer is compared with the served one


@functools.cache
def facts_by_key() -> dict[str, FamilyFacts]:
    """Every model key's facts, derived from the registry (its comparison imported)."""
    return {
        model.key: FamilyFacts(family.name, model.part("compare"))
        for family in registry.FAMILIES
        for model in family.models
    }


def facts(family: str) -> FamilyFacts:
    """The facts of a family key; `antibiotics.AMK` is a member of the `antibiotics` panel."""
    return facts_by_key()[family.partition(".")[0]]


# --- The state file -----------------------------------------------------------------------


class FamilyState(BaseModel):
    """One family's entry. A key present (even null) overrides configuration.yaml."""

    served: str | None = None
    previous: str | None = None
    canary: Canary | None = None
    shadow: str | None = None


class State(BaseModel):
    families: dict[str, FamilyState] = Field(default_factory=dict)


class LifecycleRefused(Exception):
    """A promote / rollback / canary / shadow that cannot be done; the message says why."""


def state_path() -> Path:
    configured = Path(os.environ.get(STATE_ENV) or settings().lifecycle.state_file)
    return configured if configured.is_absolute() else PROJECT_ROOT / configured


def history_path() -> Path:
    state = state_path()
    return state.with_name(f"{state.stem}-history.jsonl")


def state_stamp() -> str:
    """Changes whenever the state file is rewritten (it is replaced, never edited in place)."""
    try:
        stat = state_path().stat()
    except FileNotFoundError:
        return "absent"
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


def read_state() -> State:
    path = state_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return State()
    return State.model_validate_json(text)


@contextlib.contextmanager
def changing_state() -> Iterator[State]:
    """Read, let the caller change, and atomically replace the state file, one writer at a
    time (a lock file beside it); readers never see a half-written file."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state()
        yield state
        temporary = path.with_name(f".{path.name}.tmp")
        # Only the keys an operator set: an absent key still defers to configuration.yaml.
        families = {
            family: entry.model_dump(mode="json", exclude_unset=True)
            for family, entry in sorted(state.families.items())
        }
        temporary.write_text(json.dumps({"families": families}, indent=2) + "\n")
        os.replace(temporary, path)


def operator() -> str:
    return os.environ.get("DESPLIEGUE_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def audit(family: str, action: str, before: str | None, after: str | None, why: str) -> dict:
    """Append one line to the history: who, when, what changed from what to what, and why."""
    line = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": operator(),
        "family": family,
        "action": action,
        "from": before,
        "to": after,
        "why": why,
    }
    with history_path().open("a", encoding="utf-8") as history:
        history.write(json.dumps(line) + "\n")
    return line


def history(family: str | None = None) -> list[dict]:
    try:
        lines = history_path().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = [json.loads(line) for line in lines if line.strip()]
    return [e for e in entries if family is None or e["family"] == family]


# --- What each family should serve ----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The tags one family should have loaded, and where that choice comes from."""

    family: str
    model_name: str
    served: str
    canary: str | None
    percent: float
    shadow: str | None
    source: str
    previous: str | None = None


def _store_folder() -> Path:
    """The model store's folder (the Bento's own inside an image)."""
    from despliegue.bentoml_compat import model_store_folder

    return model_store_folder()


def resolve(tag: str) -> str:
    """`name:latest` as the concrete stored tag it names today (unchanged if not stored).

    Read from the store's folders, not through `bentoml.models.get`: that parses the model's
    YAML (tens of milliseconds with baseline statistics), and GET /models resolves every family.
    """
    name, _, version = tag.lower().partition(":")
    folder = _store_folder() / name
    if version in ("", "latest"):
        try:
            version = (folder / "latest").read_text().strip()
        except OSError:
            return tag
    return f"{name}:{version}" if (folder / version / "model.yaml").is_file() else tag


def configured_families(runner: str | None = None) -> dict[str, tuple[str, FamilyConfig | None]]:
    """Family key -> (the tag configuration serves, its entry), panel members included; only
    one runner's families if given (listing a panel's models reads the store)."""
    found: dict[str, tuple[str, FamilyConfig | None]] = {}
    for name, entry in settings().families.items():
        if runner is not None and facts(name).runner != runner:
            continue
        if isinstance(entry, PanelConfig):
            for code, ref in panel_models(entry).items():
                found[f"{name}.{code}"] = (str(ref.tag), None)
        else:
            found[name] = (entry.tag, entry)
    return found


def model_name_of(family: str) -> str:
    name, _, code = family.partition(".")
    entry = settings().families[name]
    if isinstance(entry, PanelConfig):
        if not code:
            raise LifecycleRefused(f"{name} is a panel: name one member, e.g. {name}.AMK")
        return entry.model_name(code).lower()
    return entry.model.lower()


def plans(runner: str | None = None) -> dict[str, Plan]:
    """Every family's plan (or those of one runner): the state file first, then configuration."""
    state = read_state()
    configured = configured_families(runner)
    panels = [n for n, e in settings().families.items() if isinstance(e, PanelConfig)]
    promoted = {key for key in state.families if key.partition(".")[0] in panels}
    found: dict[str, Plan] = {}
    for family in sorted(configured.keys() | promoted):
        if runner is not None and facts(family).runner != runner:
            continue
        default, entry = configured.get(family, (None, None))
        own = state.families.get(family, FamilyState())
        chosen = own.model_fields_set
        served = own.served if "served" in chosen and own.served else default
        if served is None:
            continue
        canary = own.canary if "canary" in chosen else (entry.canary if entry else None)
        shadow = own.shadow if "shadow" in chosen else (entry.shadow if entry else None)
        found[family] = Plan(
            family=family,
            model_name=model_name_of(family),
            served=resolve(served),
            canary=canary.tag if canary and canary.percent > 0 else None,
            percent=canary.percent if canary else 0.0,
            shadow=shadow,
            source=FROM_STATE if "served" in chosen and own.served else FROM_CONFIGURATION,
            previous=own.previous,
        )
    return found


def served_tags() -> dict[str, str]:
    """The tag each family serves now, by family key (what GET /models and drift read)."""
    return {family: plan.served for family, plan in plans().items()}


def packed_tags(runner: str) -> list[str]:
    """Tags `bentoml build` must pack for a runner: what it serves (missing ones too, so
    start-up fails naming them), plus canary, shadow and previous tags that are stored, so a
    rollback or a canary works inside the image."""
    tags: list[str] = []
    for plan in plans(runner).values():
        tags.append(plan.served)
        tags += [resolve(tag) for tag in (plan.canary, plan.shadow, plan.previous) if _stored(tag)]
    return list(dict.fromkeys(tags))


def _stored(tag: str | None) -> bool:
    if not tag:
        return False
    name, _, version = resolve(tag).lower().partition(":")
    return (_store_folder() / name / version / "model.yaml").is_file()


def packs_served_models(runner: str) -> Callable[[type], type]:
    """Class decorator (under @bentoml.service): one BentoModel attribute per tag the runner
    may serve, which is how `bentoml build` knows which models go into the Bento."""

    def declare(cls: type) -> type:
        for index, tag in enumerate(packed_tags(runner)):
            setattr(cls, f"model_{index}", bentoml.models.BentoModel(tag))
        return cls

    return declare


# --- Operator commands ------------------------------------------------------------------------


def _require_tag(family: str, tag: str) -> str:
    """The concrete stored tag, refused unless it exists and is a model of that family."""
    expected = model_name_of(family)
    if tag.partition(":")[0].lower() != expected:
        raise LifecycleRefused(f"{tag} is not a model of {family} (its models are {expected}:…)")
    if not _stored(tag):
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
        if not _stored(own.previous):
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


def family_of_model(model_name: str) -> str | None:
    """The family key a store name serves (`modelo_CIP_NM` -> `antibiotics.CIP`), if any."""
    for name, entry in settings().families.items():
        if isinstance(entry, PanelConfig):
            code = entry.code_of(model_name)
            if code:
                return f"{name}.{code}"
        elif entry.model.lower() == model_name.lower():
            return name
    return None


def pin_before_import(model_name: str) -> dict | None:
    """Before an import: record what the family serves now, if only configuration said it
    (`version: latest` would otherwise make the import the served model at the next start)."""
    family = family_of_model(model_name)
    if family is None:
        return None
    plan = plans().get(family)
    if plan is None or plan.source == FROM_STATE or not _stored(plan.served):
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
    if plan is not None and _stored(plan.served) and plan.served != tag:
        return None
    with changing_state() as state:
        state.families.setdefault(family, FamilyState()).served = tag
    return audit(family, "promote", None, tag, "first model of this family in the store")


def candidates(plan: Plan) -> list[str]:
    """Stored versions of a family's model that it does not serve, newest first."""
    return [str(m.tag) for m in stored_models(plan.model_name) if str(m.tag) != plan.served]


# --- In the runner process: the loaded models and the hot swap --------------------------------


class Answered(NamedTuple):
    """One answer item and the tag of the model that produced it."""

    model_tag: str
    answer: Any


def unzip(answers: Sequence[Answered], family: str) -> tuple[list[Any], list[str]]:
    """The answers of one request, and the tags that answered it (in the API), counted.

    One tag, except for a request split across two runner batches while a canary runs or a
    swap happens: responses then name both, comma-separated."""
    tags = list(dict.fromkeys(item.model_tag for item in answers))
    for tag in tags:
        _api_requests().labels(family=family, model_tag=tag).inc()
    return [item.answer for item in answers], tags


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


class ShadowStats(BaseModel):
    """Shadow answers compared with the served model's, since this runner process started."""

    family: str
    served: str
    shadow: str | None
    compared: int = 0
    agreed: int = 0
    agreement_rate: float | None = None
    mean_absolute_difference: float | None = None
    dropped_batches: int = Field(0, description="batches not shadowed: the shadow was busy")


class RunnerModels(BaseModel):
    """What a runner has loaded, as its `describe` method answers."""

    state_stamp: str
    cards: list[ModelCard]
    lanes: dict[str, dict[str, str | float | None]]
    problems: dict[str, str] = Field(default_factory=dict)
    shadow: dict[str, ShadowStats] = Field(default_factory=dict)


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
            if stamp == self.stamp:
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
            from despliegue.heap import release_unreachable

            release_unreachable()  # the replaced models' memory, now that no batch uses them

    def _loaded_tags(self) -> set[str]:
        return {
            loaded.tag
            for models in self.families.values()
            for loaded in (models.served, models.canary, models.shadow)
            if loaded
        }

    # Serving ---------------------------------------------------------------------------------

    def model(self, family: str) -> FamilyModels:
        return self.families[family]

    def answer(
        self, family: str, batch: Any, call: Callable[[Any, Any], Sequence[Any]]
    ) -> list[Answered]:
        """`call(model, batch)` on the family's served model, or its canary for this share of
        batches; each answer tagged; the shadow gets the batch afterwards, on its own thread."""
        models = self.families[family]  # one snapshot for the whole batch
        chosen = models.served
        lane = "served"
        if models.canary is not None and random.uniform(0, 100) < models.plan.percent:
            chosen, lane = models.canary, "canary"
        started = time.perf_counter()
        try:
            outputs = call(chosen.model, batch)
        except Exception:
            _runner_calls().labels(family, chosen.tag, lane, "error").inc()
            raise
        _runner_seconds().labels(family, chosen.tag, lane).observe(time.perf_counter() - started)
        _runner_calls().labels(family, chosen.tag, lane, "ok").inc()
        if models.shadow is not None and lane == "served":
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

        def run() -> None:
            try:
                theirs = call(shadow.model, batch)
                results = [
                    facts(family).compare(a, b) for a, b in zip(outputs, theirs, strict=True)
                ]
            except Exception:
                logger.exception("%s: shadow %s failed on a batch", family, shadow.tag)
                _runner_calls().labels(family, shadow.tag, "shadow", "error").inc()
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
            _shadow_compared().labels(*labels).inc(len(results))
            _shadow_agreed().labels(*labels).inc(agreed)
            _shadow_difference().labels(*labels).inc(difference)

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
            for lane, loaded in (
                ("served", models.served),
                ("canary", models.canary),
                ("shadow", models.shadow),
            ):
                if loaded is not None:
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


# --- Metrics (created on first use, in the worker: see despliegue/coalescing.py) -------------

_metrics: dict[str, Any] = {}


def _metric(kind: str, name: str, text: str, labels: list[str]) -> Any:
    if name not in _metrics:
        import prometheus_client

        _metrics[name] = getattr(prometheus_client, kind)(name, text, labelnames=labels)
    return _metrics[name]


def _api_requests() -> Any:
    return _metric(
        "Counter",
        "despliegue_model_requests",
        "Requests answered, by family and the model tag that answered",
        ["family", "model_tag"],
    )


def _runner_calls() -> Any:
    return _metric(
        "Counter",
        "despliegue_model_batches",
        "Runner batches by family, model tag, lane (served, canary, shadow) and outcome",
        ["family", "model_tag", "lane", "outcome"],
    )


def _runner_seconds() -> Any:
    return _metric(
        "Histogram",
        "despliegue_model_batch_seconds",
        "Time of one model call on a runner batch, by family, model tag and lane",
        ["family", "model_tag", "lane"],
    )


def _shadow_compared() -> Any:
    return _metric(
        "Counter",
        "despliegue_shadow_compared",
        "Answer items the shadow model also answered",
        ["family", "served_tag", "shadow_tag"],
    )


def _shadow_agreed() -> Any:
    return _metric(
        "Counter",
        "despliegue_shadow_agreed",
        "Shadow answer items that agree with the served model's",
        ["family", "served_tag", "shadow_tag"],
    )


def _shadow_difference() -> Any:
    return _metric(
        "Counter",
        "despliegue_shadow_absolute_difference",
        "Sum of absolute differences between shadow and served answers (divide by compared)",
        ["family", "served_tag", "shadow_tag"],
    )


# --- MLflow alias tracking --------------------------------------------------------------------


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
    import mlflow

    from despliegue.importing import ImportRefused
    from despliegue.mlflow_import import import_mlflow

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
