"""The API worker's live windows of every model it has answered with, their persistence, and the
drift report of a family.

`record(family, model_tag, inputs_summary, outputs)` counts a call into the model's open window;
a window closes after `drift.window_items` items and joins a bounded history. What is kept is
histogram counts; inputs are never kept. Windows are written to disk every
`drift.persist_interval_s` seconds and at shutdown, one file per API worker, so a restart keeps
them. Models stored without a baseline (an import without `--baseline`) get one built from
their first `drift.baseline_items` answered items (held in memory until then, not written).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from despliegue.config import DriftSettings
from despliegue.drift.baselines import Summary, build_baseline
from despliegue.drift.metrics import service_metrics
from despliegue.drift.statistics import overall
from despliegue.drift.summaries import Outputs
from despliegue.drift.windows import add_to_window, empty_window, judge_window, now, usable_baseline

log = logging.getLogger("despliegue.drift")


@dataclass
class ModelState:
    """Everything kept about one served model: its family, baseline, open and closed windows."""

    family: str
    baseline: dict[str, Any] | None
    open: dict[str, Any] | None
    closed: list[dict[str, Any]]
    # Summaries of the first answered items, while a model without a baseline collects them.
    pending: tuple[Summary, Outputs] | None = None


class Recorder:
    """The live windows of every model this API worker has answered with."""

    def __init__(self, settings: DriftSettings, storage: Path, worker: str) -> None:
        self.settings = settings
        self.storage = storage
        self.path = storage / f"live-{worker}.json"
        self.models: dict[str, ModelState] = {}
        self.saved_at = time.monotonic()
        self.metrics = service_metrics() if settings.capture else None
        # Answered calls not yet counted: (method, items, answers), despliegue/drift/capture.py.
        self.pending: list[tuple[str, Any, Any]] = []
        # Held while pending calls are counted: one count at a time, so calls enter their
        # windows in the order they were answered (a window closes at an exact item count).
        self.counting = asyncio.Lock()
        self._load()

    def attach(self, tag: str, family: str, baseline: dict[str, Any] | None) -> ModelState:
        """The state of a model, created on first sight with the baseline its card holds (or
        one this recorder built earlier from first requests)."""
        state = self.models.get(tag)
        if state is None:
            state = ModelState(family=family, baseline=None, open=None, closed=[])
            self.models[tag] = state
        if state.baseline is None:
            state.baseline = usable_baseline(baseline) or self._learned_baseline(tag)
        if state.baseline is not None and state.open is None:
            state.open = empty_window(state.baseline)
        return state

    def record(
        self,
        family: str,
        model_tag: str,
        inputs_summary: Summary,
        outputs: Outputs,
        baseline: dict[str, Any] | None = None,
    ) -> None:
        """Count one answered call of one model (the only way anything enters a window)."""
        state = self.attach(model_tag, family, baseline)
        if self.metrics is not None:
            self.metrics.observe(family, model_tag, outputs)
        if state.baseline is None:
            self._collect_baseline(model_tag, state, inputs_summary, outputs)
        else:
            # Windows close at exactly `window_items` items, however the items were grouped
            # into calls: the verdicts depend on the traffic only, not on its batching.
            total, start = item_count(inputs_summary, outputs), 0
            while start < total:
                assert state.open is not None
                if state.open["items"] >= self.settings.window_items:  # saved by an older run
                    self._close(model_tag, state)
                    continue
                stop = min(total, start + self.settings.window_items - state.open["items"])
                summary, answered = items_between(inputs_summary, outputs, start, stop)
                add_to_window(state.open, state.baseline, summary, answered)
                if state.open["items"] >= self.settings.window_items:
                    self._close(model_tag, state)
                start = stop
        if time.monotonic() - self.saved_at >= self.settings.persist_interval_s:
            self.save()

    def _close(self, tag: str, state: ModelState) -> None:
        assert state.open is not None and state.baseline is not None
        window = {**state.open, "closed_at": now()}
        judged = judge_window(state.baseline, window, self.settings)
        window["psi"] = {f"{j['role']}.{j['feature']}": j["psi"] for j in judged}
        window["verdict"] = overall([j["verdict"] for j in judged])
        state.closed = [*state.closed, window][-self.settings.history_windows :]
        state.open = empty_window(state.baseline)
        if self.metrics is not None:
            self.metrics.drift(state.family, tag, judged)

    def _collect_baseline(
        self, tag: str, state: ModelState, summary: Summary, outputs: Outputs
    ) -> None:
        if state.pending is None:
            state.pending = (Summary(numeric={}, words=None), {})
        held, held_outputs = state.pending
        for name, values in summary.numeric.items():
            held.numeric.setdefault(name, []).extend(values)
        if summary.words is not None:
            held.words = [*(held.words or []), *summary.words]
        for name, values in outputs.items():
            held_outputs.setdefault(name, []).extend(values)
        collected = max([len(v) for v in held_outputs.values()] + [0])
        if collected >= self.settings.baseline_items:
            source = f"first {collected} requests"
            state.baseline = build_baseline(held, held_outputs, source=source)
            state.pending = None
            state.open = empty_window(state.baseline)
            path = self.storage / "baselines" / f"{_file_name(tag)}.json"
            _write_json(path, {"tag": tag, "baseline": state.baseline})

    def _learned_baseline(self, tag: str) -> dict[str, Any] | None:
        path = self.storage / "baselines" / f"{_file_name(tag)}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads(path.read_text(encoding="utf-8"))["baseline"]
        return None

    def save(self) -> None:
        """Write every model's open and closed windows (not the baselines or pending items)."""
        self.saved_at = time.monotonic()
        state = {
            tag: {"family": s.family, "open": s.open, "closed": s.closed}
            for tag, s in self.models.items()
            if s.open is not None
        }
        try:
            _write_json(self.path, {"saved_at": now(), "models": state})
        except OSError as exc:
            log.warning("cannot save the drift windows to %s: %s", self.path, exc)

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))["models"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable drift windows in %s: %s", self.path, exc)
            return
        for tag, s in saved.items():
            self.models[tag] = ModelState(
                family=s["family"], baseline=None, open=s["open"], closed=s["closed"]
            )

    def report(self, family: str, tags: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
        """The drift of a family's served models (tag -> baseline from its card)."""
        models = []
        for tag, card_baseline in tags.items():
            state = self.attach(tag, family, card_baseline)
            models.append(self._model_report(tag, state))
        verdict = overall([m["verdict"] for m in models])
        return {
            "family": family,
            "verdict": verdict,
            "checked_at": now(),
            "window_items": self.settings.window_items,
            "thresholds": self.settings.thresholds.model_dump(),
            "models": models,
        }

    def _model_report(self, tag: str, state: ModelState) -> dict[str, Any]:
        baseline = state.baseline
        answer: dict[str, Any] = {"model_tag": tag, "baseline": baseline_facts(baseline)}
        if baseline is None:
            held = state.pending[1] if state.pending else {}
            collected = max([len(v) for v in held.values()] + [0])
            answer.update(
                verdict="insufficient data",
                window=None,
                features=[],
                note=f"collecting a baseline: {collected} of {self.settings.baseline_items} items",
                history=[],
            )
            return answer
        assert state.open is not None
        # The last closed window is judged; before any closes, the open one.
        window, kind = (state.closed[-1], "closed") if state.closed else (state.open, "open")
        features = judge_window(baseline, window, self.settings)
        answer.update(
            verdict=overall([f["verdict"] for f in features]),
            window={
                "state": kind,
                "items": window["items"],
                "opened_at": window["opened_at"],
                "closed_at": window.get("closed_at"),
                "number": len(state.closed) if kind == "closed" else len(state.closed) + 1,
            },
            open_window_items=state.open["items"],
            features=[f for f in features if f["role"] == "inputs"],
            predictions=[f for f in features if f["role"] == "outputs"],
            history=[
                {"closed_at": w["closed_at"], "verdict": w["verdict"], "psi": w["psi"]}
                for w in state.closed
            ],
        )
        return answer


def item_count(summary: Summary, outputs: Outputs) -> int:
    """How many items a summary and its outputs describe (each list holds one value per item)."""
    lists = [*summary.numeric.values(), *outputs.values()]
    if summary.words is not None:
        lists.append(summary.words)
    return max([len(values) for values in lists] + [0])


def items_between(
    summary: Summary, outputs: Outputs, start: int, stop: int
) -> tuple[Summary, Outputs]:
    """Items start..stop of a summary and its outputs."""
    words = summary.words[start:stop] if summary.words is not None else None
    numeric = {name: values[start:stop] for name, values in summary.numeric.items()}
    return Summary(numeric=numeric, words=words), {
        name: values[start:stop] for name, values in outputs.items()
    }


def baseline_facts(baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """What `GET /models` says of a baseline: where it came from and how many items made it."""
    if baseline is None:
        return {"source": "none yet", "count": 0}
    return {"source": baseline.get("source", "reference"), "count": baseline.get("count", 0)}


def _file_name(tag: str) -> str:
    return tag.replace(":", "-").replace("/", "-")


def _write_json(path: Path, content: Any) -> None:
    """Write a file whole or not at all (a crash mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(content, separators=(",", ":")), encoding="utf-8")
    partial.replace(path)
