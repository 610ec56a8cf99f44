"""The benchmark harness's pure parts: percentiles, /metrics parsing, ratios, the tables."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from benchmarks.paths import PATHS, by_name, encode
from benchmarks.servers import batching_off_config, drift_off_config, split_cpus
from benchmarks.stats import (
    batch_totals,
    fold_profile,
    frame_package,
    latency_summary,
    mean_batch_size,
    percentile,
    ratios_for,
    render_markdown,
    render_profile,
    render_stress_markdown,
    short_frame,
    step_verdict,
    stress_summary,
)
from despliegue.config import DEFAULT_CONFIG_PATH, load_settings

METRICS = """\
# HELP despliegue_runner_call_items Items per call from the API to a runner method
# TYPE despliegue_runner_call_items histogram
despliegue_runner_call_items_sum{{method_name="predict",runner_name="HeatFlowRegressor",worker_index="1"}} {hs}
despliegue_runner_call_items_count{{method_name="predict",runner_name="HeatFlowRegressor",worker_index="1"}} {hc}
despliegue_runner_call_items_sum{{method_name="predict",runner_name="HeatFlowRegressor",worker_index="2"}} 10.0
despliegue_runner_call_items_count{{method_name="predict",runner_name="HeatFlowRegressor",worker_index="2"}} 2.0
despliegue_runner_call_items_bucket{{le="1.0",method_name="predict",runner_name="HeatFlowRegressor",worker_index="1"}} 99.0
despliegue_runner_call_items_sum{{method_name="classify",runner_name="FalseTrueClassifier",worker_index="1"}} 500.0
despliegue_runner_call_items_count{{method_name="classify",runner_name="FalseTrueClassifier",worker_index="1"}} 7.0
"""  # noqa: E501


@pytest.mark.parametrize("q", [0, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = [float(v) for v in np.random.default_rng(1).exponential(10, size=101)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))
    assert math.isnan(latency_summary([])["p99_ms"])


def test_latency_summary_is_in_milliseconds() -> None:
    summary = latency_summary([0.001, 0.002, 0.003])
    assert summary["p50_ms"] == pytest.approx(2.0)
    assert summary["max_ms"] == pytest.approx(3.0)


def test_batch_totals_sum_workers_of_one_runner_method_only() -> None:
    text = METRICS.format(hs=30.0, hc=3.0)
    assert batch_totals(text, "HeatFlowRegressor", "predict") == (40.0, 5.0)
    assert batch_totals(text, "FalseTrueClassifier", "classify") == (500.0, 7.0)
    assert batch_totals(text, "Absent", "predict") == (0.0, 0.0)


def test_mean_batch_size_is_the_delta_between_scrapes() -> None:
    before = METRICS.format(hs=30.0, hc=3.0)
    after = METRICS.format(hs=130.0, hc=7.0)
    assert mean_batch_size(before, after, "HeatFlowRegressor", "predict") == pytest.approx(25.0)
    assert mean_batch_size(before, before, "HeatFlowRegressor", "predict") is None
    assert mean_batch_size("", "", "HeatFlowRegressor", "predict") is None


def point(concurrency: int, rps: float, p99: float) -> dict:
    return {
        "concurrency": concurrency,
        "throughput_rps": rps,
        "p50_ms": p99 / 2,
        "p95_ms": p99 * 0.9,
        "p99_ms": p99,
        "errors": 0,
        "mean_batch_size": None,
        "client_cpu_util": 0.1,
    }


def result_with(seed: bool = True) -> dict:
    designs = {
        "batching_on": [point(32, 400.0, 50.0)],
        "batching_off": [point(32, 100.0, 200.0)],
    }
    if seed:
        designs["seed"] = [point(32, 200.0, 100.0)]
    return {
        "date": "2026-11-23T12:00:00+00:00",
        "machine": {
            "cores": 2,
            "cpu_model": "Test CPU",
            "server_cpus": [0],
            "client_cpus": [1],
            "python": "3.11.7",
            "versions": {"bentoml": "1.4.39"},
        },
        "settings": {"seconds": 8.0, "warmup": 2.0, "concurrency": [32]},
        "cold_start": {"readyz_s": 6.5, "models_s": 7.0},
        "paths": {
            "heatflow": {
                "items_per_request": 2,
                "limit": {
                    "items_per_s": {"1": 1000.0, "64": 8000.0},
                    "best_batch_size": 64,
                    "best_items_per_s": 8000.0,
                    "api_work_items_per_s": 8000.0,
                    "ceiling_items_per_s": 4000.0,
                },
                "designs": designs,
            }
        },
    }


def test_ratios_compare_items_with_the_limit_and_requests_with_the_rest() -> None:
    ratios = ratios_for(result_with()["paths"]["heatflow"], 32)
    assert ratios["service_vs_limit"] == pytest.approx(400 * 2 / 8000)
    assert ratios["service_vs_ceiling"] == pytest.approx(400 * 2 / 4000)
    assert ratios["batching_on_vs_off"] == pytest.approx(4.0)
    assert ratios["service_vs_seed"] == pytest.approx(2.0)
    assert ratios["p99_service_vs_seed"] == pytest.approx(0.5)


def test_missing_design_gives_no_ratio_rather_than_a_wrong_one() -> None:
    path = result_with(seed=False)["paths"]["heatflow"]
    assert ratios_for(path, 32)["service_vs_seed"] is None
    assert ratios_for(path, 32)["service_vs_mlflow"] is None
    assert ratios_for(path, 64)["batching_on_vs_off"] is None


def test_mlflow_serve_is_a_design_with_its_own_ratio_and_label() -> None:
    result = result_with()
    result["paths"]["heatflow"]["designs"]["mlflow"] = [point(32, 50.0, 400.0)]
    assert ratios_for(result["paths"]["heatflow"], 32)["service_vs_mlflow"] == pytest.approx(8.0)
    table = render_markdown(result)
    assert "mlflow models serve" in table and "service / mlflow serve" in table


def test_markdown_shows_machine_absolutes_and_ratios() -> None:
    text = render_markdown(result_with())
    assert "Test CPU, 2 cores" in text
    assert "/readyz 6.50 s" in text
    assert "| heatflow | 8,000 | 64 | 8.0 | 8,000 | 4,000 |" in text  # gain 8000/1000
    assert "| heatflow | service, batching on | 32 | 400.0 | 25.0 | 45.0 | 50.0 | 0 |" in text
    assert "| heatflow | 32 | 0.1 | 0.2 | 4 | – | 2 | 0.5 |" in text
    assert "Warning" not in text


def test_markdown_shows_warnings() -> None:
    result = {**result_with(), "warnings": ["heatflow: still batched"]}
    assert "**Warning:** heatflow: still batched" in render_markdown(result)


def test_a_step_breaks_the_slo_on_p99_or_on_errors() -> None:
    slo = {"slo_p99_ms": 100.0, "slo_max_error_rate": 0.01}
    fast = step_verdict(4, 2.0, [10.0] * 100, Counter(), **slo)
    slow = step_verdict(8, 2.0, [10.0] * 98 + [300.0] * 2, Counter(), **slo)
    failing = step_verdict(16, 2.0, [10.0] * 100, Counter({"503 overloaded": 5}), **slo)
    assert fast["broken"] == [] and fast["ok_rps"] == pytest.approx(50.0)
    assert slow["broken"] == ["p99 300 ms > 100 ms"]
    assert failing["broken"] == ["error rate 5.0% > 1.0%"]

    summary = stress_summary([fast, slow, failing])
    assert summary["max_sustainable_rps"] == pytest.approx(50.0)
    assert summary["at_users"] == 4
    assert summary["failed_first"]["users"] == 8


def test_stress_markdown_names_what_failed_first() -> None:
    slo = {"slo_p99_ms": 100.0, "slo_max_error_rate": 0.01}
    steps = [
        step_verdict(1, 1.0, [5.0] * 50, Counter(), **slo),
        step_verdict(2, 1.0, [5.0] * 50, Counter({"503": 10}), **slo),
    ]
    result = {
        "date": "2026-11-23",
        "slo": {"p99_ms": 100.0, "max_error_rate": 0.01},
        "step_seconds": 1.0,
        "max_users": 2,
        "machine": result_with()["machine"],
        "endpoints": [{"route": "/heatflow", **stress_summary(steps)}],
    }
    text = render_stress_markdown(result)
    assert "| /heatflow | 50.0 | 1 | 2 users: error rate 20.0% > 1.0% | 503 ×10 |" in text


def test_cpu_split_keeps_client_and_server_apart() -> None:
    assert split_cpus([0, 1]) == ([0], [1])
    assert split_cpus([3, 0, 2, 1]) == ([0, 1, 2], [3])
    assert split_cpus([0]) == ([0], [0])


def test_batching_off_config_is_valid_and_off_for_every_family(tmp_path) -> None:
    off = load_settings(batching_off_config(DEFAULT_CONFIG_PATH, tmp_path / "off.yaml"))
    assert off.families
    assert all(not family.batching.enabled for family in off.families.values())


def test_drift_off_config_is_valid_and_captures_nothing(tmp_path) -> None:
    shipped = load_settings(DEFAULT_CONFIG_PATH)
    off = load_settings(drift_off_config(DEFAULT_CONFIG_PATH, tmp_path / "no-drift.yaml"))
    assert shipped.drift.capture and not off.drift.capture
    assert off.families == shipped.families


def test_drift_cost_is_the_shipped_service_over_the_same_without_capture() -> None:
    result = result_with()
    result["paths"]["heatflow"]["designs"]["drift_off"] = [point(32, 500.0, 40.0)]
    assert ratios_for(result["paths"]["heatflow"], 32)["drift_on_vs_off"] == pytest.approx(0.8)
    assert "drift capture on / off" in render_markdown(result)


@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.name)
def test_every_path_makes_a_body_and_a_batch(path) -> None:
    rng = np.random.default_rng(0)
    assert by_name(path.name) is path
    assert encode(path, path.make_body(rng))
    assert len(path.make_batch(rng, 8)) == 8
    assert path.family in load_settings(DEFAULT_CONFIG_PATH).families
    if path.mlflow_body is not None:
        route, make_body = path.request("mlflow")
        assert route == "/invocations" and encode(path, make_body(rng))


SITE = "/srv/.venv/lib/python3.11/site-packages"
FOLDED = [
    f"main (/usr/lib/python3.11/asyncio/runners.py:10);predict (/repo/runners/heatflow.py:24);"
    f"predict ({SITE}/sklearn/svm/_base.py:400) 3",
    f"main (/usr/lib/python3.11/asyncio/runners.py:10);start_span "
    f"({SITE}/opentelemetry/sdk/trace/__init__.py:794) 5",
    f"main (/usr/lib/python3.11/asyncio/runners.py:11);start_span "
    f"({SITE}/opentelemetry/sdk/trace/__init__.py:800) 2",
    "not a stack line",
]


def test_profile_folds_self_by_frame_and_inclusive_by_function() -> None:
    profile = fold_profile(FOLDED)
    assert profile["samples"] == 10
    assert profile["self"]["predict (sklearn/svm/_base.py:400)"] == 3
    assert profile["inclusive"]["main (stdlib/asyncio/runners.py)"] == 10
    assert profile["inclusive"]["start_span (opentelemetry/sdk/trace/__init__.py)"] == 7
    assert profile["inclusive"]["predict (runners/heatflow.py)"] == 3


def test_frames_are_attributed_to_their_package() -> None:
    assert frame_package(f"f ({SITE}/opentelemetry/sdk/trace/x.py:1)") == "opentelemetry"
    assert frame_package("f (/usr/lib/python3.11/asyncio/events.py:80)") == "stdlib/asyncio"
    assert frame_package("f (/repo/runners/heatflow.py:3)") == "runners"
    assert short_frame(f"f ({SITE}/sklearn/base.py:9)") == "f (sklearn/base.py:9)"


def test_profile_report_leaves_out_the_trunk_and_shows_packages() -> None:
    text = render_profile("HeatFlowRegressor-1", fold_profile(FOLDED))
    assert "## HeatFlowRegressor-1 (10 samples)" in text
    assert "-  70.0%  opentelemetry" in text
    assert "-  30.0%  sklearn" in text
    assert "main (stdlib/asyncio/runners.py)" not in text.split("Inclusive")[1].split("Self:")[0]
