"""Drift statistics, baselines, windows and their persistence, on data with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from despliegue.config import ConfigurationError, DriftSettings, load_settings
from despliegue.drift.baselines import (
    STATISTICS_SIDE,
    Summary,
    bin_counts,
    build_baseline,
    image_statistics,
    images_summary,
    text_summary,
)
from despliegue.drift.recorder import Recorder
from despliegue.drift.report import render
from despliegue.drift.statistics import binned_ks, chi_square, psi
from despliegue.drift.windows import add_to_window, empty_window, judge_window

SETTINGS = DriftSettings(window_items=200, min_items=50, baseline_items=300)


def thickness_baseline(rng: np.random.Generator) -> dict:
    values = rng.uniform(0, 12_000, 900)
    return build_baseline(
        Summary(numeric={"thickness": values.tolist()}),
        {"band": ["thin" if v < 6000 else "thick" for v in values]},
        source="reference",
    )


def test_numeric_baseline_has_decile_bins_quantiles_and_open_ends() -> None:
    baseline = thickness_baseline(np.random.default_rng(0))["inputs"]["thickness"]
    assert len(baseline["edges"]) == 9 and len(baseline["counts"]) == 10
    assert sum(baseline["counts"]) == 900 and max(baseline["counts"]) - min(baseline["counts"]) <= 1
    assert (
        baseline["quantiles"]["p05"] < baseline["quantiles"]["p50"] < baseline["quantiles"]["p95"]
    )
    # Values beyond the baseline's range land in the open end bins.
    assert bin_counts(baseline["edges"], [-5.0, 1e9]) == [1] + [0] * 8 + [1]


def test_same_distribution_is_no_drift_and_a_shift_is_flagged() -> None:
    rng = np.random.default_rng(1)
    baseline = thickness_baseline(rng)

    def window(values: np.ndarray) -> dict:
        open_window = empty_window(baseline)
        bands = ["thin" if v < 6000 else "thick" for v in values]
        add_to_window(
            open_window, baseline, Summary(numeric={"thickness": list(values)}), {"band": bands}
        )
        return open_window

    same = {
        j["feature"]: j
        for j in judge_window(baseline, window(rng.uniform(0, 12_000, 200)), SETTINGS)
    }
    assert same["thickness"]["verdict"] == "no drift" and same["band"]["verdict"] == "no drift"
    thicker = rng.uniform(8_000, 15_000, 200)
    shifted = {j["feature"]: j for j in judge_window(baseline, window(thicker), SETTINGS)}
    assert shifted["thickness"]["verdict"] == "drift"
    assert shifted["thickness"]["psi"] > 0.2 and shifted["thickness"]["p_value"] < 0.01
    assert shifted["band"]["test"] == "chi-square" and shifted["band"]["verdict"] == "drift"


def test_statistics_against_known_values() -> None:
    assert psi([50, 50], [50, 50]) == pytest.approx(0.0)
    # PSI of (0.5, 0.5) -> (0.9, 0.1): 0.4*ln(1.8) + 0.4*ln(5).
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * np.log(1.8) + 0.4 * np.log(5))
    statistic, p_value = binned_ks([10] * 10, [10] * 10)
    assert statistic == 0 and p_value == pytest.approx(1.0)
    statistic, p_value = binned_ks([10] * 10, [0] * 5 + [20] * 5)
    assert statistic == pytest.approx(0.5) and p_value < 0.01
    assert chi_square({"S": 60, "R": 40}, {"S": 60, "R": 40})[1] == pytest.approx(1.0)
    assert chi_square({"S": 60, "R": 40}, {"S": 10, "R": 90})[1] < 1e-6


def test_darker_images_lower_brightness_and_blur_lowers_sharpness() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    stats = image_statistics(image)
    darker = image_statistics((image * 0.3).astype(np.uint8))
    assert (stats["width_px"], stats["height_px"]) == (320, 240)
    assert darker["brightness"] < 0.35 * stats["brightness"]
    flat = np.full((240, 320, 3), 128, dtype=np.uint8)
    assert image_statistics(flat)["sharpness"] == 0 and image_statistics(flat)["colourfulness"] == 0
    assert images_summary([image, image]).numeric["brightness"] == [stats["brightness"]] * 2


def textbook_image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """The statistics written plainly (numpy's mean, std and var on a float view): what the
    stored baselines were measured with, so the served statistics must stay equal to it."""
    step = max(1, -(-max(pixels.shape[:2]) // STATISTICS_SIDE))
    view = pixels[::step, ::step].astype(np.float64)
    rgb = np.repeat(view[..., None], 3, axis=-1) if view.ndim == 2 else view[..., :3]
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = 0.299 * red + 0.587 * green + 0.114 * blue
    rg, yb = red - green, 0.5 * (red + green) - blue
    laplacian = (
        4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    )
    return {
        "width_px": pixels.shape[1],
        "height_px": pixels.shape[0],
        "brightness": grey.mean(),
        "contrast": grey.std(),
        "colourfulness": np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()),
        "sharpness": laplacian.var() if min(grey.shape) > 2 else 0.0,
    }


@pytest.mark.parametrize(
    "shape",
    [(224, 224, 3), (480, 640, 3), (1000, 333, 3), (50, 70), (50, 70, 4), (3, 3, 3), (2, 5, 3)],
)
def test_image_statistics_equal_the_textbook_formulas(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    measured = image_statistics(pixels)
    expected = textbook_image_statistics(pixels)
    assert measured.keys() == expected.keys()
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_text_baseline_keeps_hashed_vocabulary_and_oov_rises_for_another_language() -> None:
    spanish = [
        f"el banco central publicó su informe número {i} sobre la inflación" for i in range(60)
    ]
    summary = text_summary(spanish)
    baseline = build_baseline(summary, {"class": ["1"] * 60}, source="import")
    assert "banco" not in baseline["vocabulary"]  # words are kept as hashes only
    assert baseline["inputs"]["oov_rate"]["mean"] < 0.2
    window = empty_window(baseline)
    german = text_summary(["Die Zentralbank veröffentlichte heute ihren Jahresbericht"] * 60)
    add_to_window(window, baseline, german, {"class": ["0"] * 60})
    judged = {j["feature"]: j for j in judge_window(baseline, window, SETTINGS)}
    assert judged["oov_rate"]["verdict"] == "drift"


def test_windows_close_persist_and_survive_a_new_recorder(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    baseline = thickness_baseline(rng)

    def send(recorder: Recorder, values: np.ndarray) -> None:
        bands = ["thin" if v < 6000 else "thick" for v in values]
        summary = Summary(numeric={"thickness": values.tolist()})
        recorder.record("heatflow", "m:1", summary, {"band": bands}, baseline)

    recorder = Recorder(SETTINGS, tmp_path, "1")
    for _ in range(2):
        send(recorder, rng.uniform(0, 12_000, 100))
    report = recorder.report("heatflow", {"m:1": baseline})
    assert report["verdict"] == "no drift" and report["models"][0]["window"]["state"] == "closed"
    send(recorder, rng.uniform(9_000, 15_000, 100))
    recorder.save()
    saved = (tmp_path / "live-1.json").read_text()
    assert "9000" not in saved and len(json.loads(saved)["models"]["m:1"]["closed"]) == 1

    restarted = Recorder(SETTINGS, tmp_path, "1")
    assert restarted.report("heatflow", {"m:1": baseline})["models"][0]["open_window_items"] == 100
    send(restarted, rng.uniform(9_000, 15_000, 100))
    model = restarted.report("heatflow", {"m:1": baseline})["models"][0]
    assert model["verdict"] == "drift" and model["window"]["number"] == 2
    assert [w["verdict"] for w in model["history"]] == ["no drift", "drift"]


def test_history_is_bounded(tmp_path: Path) -> None:
    settings = DriftSettings(window_items=10, min_items=5, history_windows=3)
    baseline = thickness_baseline(np.random.default_rng(4))
    recorder = Recorder(settings, tmp_path, "1")
    for _ in range(7):
        recorder.record("heatflow", "m:1", Summary(numeric={"thickness": [1.0] * 10}), {}, baseline)
    assert len(recorder.models["m:1"].closed) == 3


def test_windows_hold_exactly_window_items_however_the_calls_group_them(tmp_path: Path) -> None:
    """Capture counts the calls of a fraction of a second together: the windows, and so the
    verdicts, are the same as when each call is counted alone."""
    rng = np.random.default_rng(5)
    baseline = thickness_baseline(rng)
    values = np.concatenate([rng.uniform(0, 12_000, 230), rng.uniform(9_000, 15_000, 270)])
    settings = DriftSettings(window_items=100, min_items=50)

    def windows(groups: list[int], folder: str) -> list[dict]:
        recorder = Recorder(settings, tmp_path / folder, "1")
        start = 0
        for size in groups:
            chunk = values[start : start + size]
            bands = ["thin" if v < 6000 else "thick" for v in chunk]
            summary = Summary(numeric={"thickness": chunk.tolist()})
            recorder.record("heatflow", "m:1", summary, {"band": bands}, baseline)
            start += size
        state = recorder.models["m:1"]
        return [
            {key: w[key] for key in ("items", "inputs", "outputs", "psi", "verdict")}
            for w in state.closed
        ] + [{key: state.open[key] for key in ("items", "inputs", "outputs")}]

    one_by_one = windows([1] * len(values), "single")
    assert [w["items"] for w in one_by_one] == [100, 100, 100, 100, 100, 0]
    assert windows([7, 250, 3, 240], "merged") == one_by_one
    assert [w["verdict"] for w in one_by_one[:5]] == ["no drift"] * 2 + ["drift"] * 3


def test_a_model_without_baseline_learns_one_from_its_first_items(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    recorder = Recorder(SETTINGS, tmp_path, "1")
    for _ in range(3):
        values = rng.uniform(0, 100, 100).tolist()
        recorder.record("heatflow", "imported:1", Summary(numeric={"x": values}), {"y": values})
    model = recorder.report("heatflow", {"imported:1": None})["models"][0]
    assert model["baseline"] == {"source": "first 300 requests", "count": 300}
    # Learned baselines are kept on disk: a new recorder does not start collecting again.
    again = Recorder(SETTINGS, tmp_path, "2")
    assert again.report("heatflow", {"imported:1": None})["models"][0]["baseline"]["count"] == 300


def test_a_baseline_stored_by_an_earlier_version_is_learned_again(tmp_path: Path) -> None:
    """Models stored before this baseline form (no inputs/outputs) broke GET /models."""
    old_form = {"sediment_thickness_m": {"mean": 3.0}}
    recorder = Recorder(SETTINGS, tmp_path, "1")
    values = list(range(100))
    recorder.record("heatflow", "old:1", Summary(numeric={"x": values}), {"y": values}, old_form)
    model = recorder.report("heatflow", {"old:1": old_form})["models"][0]
    assert model["baseline"]["source"] == "none yet"  # collecting from the first requests


def test_drift_block_is_validated(tmp_path: Path) -> None:
    from despliegue.config import config_path

    text = config_path().read_text().replace("psi: 0.2 ", "psi: -1 ")
    bad = tmp_path / "configuration.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigurationError, match=r"drift\.thresholds\.psi"):
        load_settings(bad)


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    baseline = thickness_baseline(rng)
    recorder = Recorder(SETTINGS, tmp_path, "1")
    for low in (0, 0, 9_000, 9_000):
        values = rng.uniform(low, low + 6_000 if low else 12_000, 100)
        recorder.record(
            "heatflow", "m:1", Summary(numeric={"thickness": values.tolist()}), {}, baseline
        )
    page = render(recorder.report("heatflow", {"m:1": baseline}))
    assert page.count("<svg") == 3  # two histograms (input, prediction) and PSI over time
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script" not in page


def test_observing_all_values_at_once_counts_as_observing_each() -> None:
    """The drift metrics count a call's values with one increment per bucket: the series must
    read exactly as one observe() per value would have left them."""
    from prometheus_client import CollectorRegistry, Histogram

    from despliegue.drift.metrics import SCORE_BUCKETS, observe_all

    values = [0.0, 0.1, 0.1000001, 0.5, 0.95, 0.99, 0.991, 1.0, 7.0, -1.0, 0.3]
    registry = CollectorRegistry()
    one_by_one = Histogram("one", "", buckets=SCORE_BUCKETS, registry=registry)
    at_once = Histogram("all", "", buckets=SCORE_BUCKETS, registry=registry)
    for value in values:
        one_by_one.observe(value)
    observe_all(at_once, values)
    observe_all(at_once, [])
    (first,), (second,) = one_by_one.collect(), at_once.collect()
    read = [(s.name[3:], s.labels, s.value) for s in first.samples if "created" not in s.name]
    assert read == [
        (s.name[3:], s.labels, s.value) for s in second.samples if "created" not in s.name
    ]
    assert any(s.name.endswith("_count") and s.value == len(values) for s in second.samples)


def test_two_counts_at_once_fill_windows_in_the_order_calls_were_answered(tmp_path: Path) -> None:
    """The timer's count and a /drift report's count may start together; the first awaits the
    model cards while the second has later calls. Windows close at an exact item count, so if
    the second counted first, items would change windows: it waits instead."""
    import asyncio
    from datetime import UTC, datetime

    from despliegue.contracts import Answered, ModelCard
    from despliegue.drift.capture import count_pending

    rng = np.random.default_rng(6)
    thickness = np.concatenate([rng.uniform(0, 6_000, 150), rng.uniform(6_000, 12_000, 250)])
    baseline = build_baseline(
        Summary(numeric={"sediment_thickness_m": rng.uniform(0, 12_000, 900).tolist()}),
        {"heat_flow_mw_m2": rng.uniform(40, 100, 900).tolist()},
        source="reference",
    )
    card = ModelCard(
        tag="heatflow_svr:v1",
        family="heatflow",
        framework="sklearn",
        reference=True,
        created=datetime.now(UTC),
        metadata={"baseline": baseline},
    )
    calls = [
        ("heatflow", list(chunk), [Answered(card.tag, 60.0 + v / 1e3) for v in chunk])
        for chunk in np.split(thickness, [150, 300])
    ]
    settings = DriftSettings(window_items=100, min_items=50)

    def windows(recorder: Recorder) -> list[list[int]]:
        """Each closed window's thickness counts per baseline bin."""
        return [w["inputs"]["sediment_thickness_m"] for w in recorder.models[card.tag].closed]

    asked: list[str] = []

    async def cards_of(runner: str) -> list[ModelCard]:
        """As the catalog answers (it may ask the runner): the first question is the slow one."""
        asked.append(runner)
        await asyncio.sleep(0.05 if len(asked) == 1 else 0)
        return [card]

    async def in_order() -> Recorder:
        recorder = Recorder(settings, tmp_path / "one", "1")
        recorder.pending = list(calls)
        await count_pending(cards_of, recorder)
        return recorder

    async def two_at_once() -> Recorder:
        recorder = Recorder(settings, tmp_path / "two", "1")
        recorder.pending = [calls[0]]
        first = asyncio.create_task(count_pending(cards_of, recorder))
        await asyncio.sleep(0)  # the first count holds call 0 and waits for the cards
        recorder.pending.extend(calls[1:])
        await asyncio.gather(first, count_pending(cards_of, recorder))
        return recorder

    expected = windows(asyncio.run(in_order()))
    assert len(expected) == 4
    asked.clear()
    assert windows(asyncio.run(two_at_once())) == expected
