"""The flood benchmark's set-up and report (benchmarks/flood.py)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.flood import render
from benchmarks.servers import few_places_config
from despliegue.config import config_path, load_settings


def test_the_flood_server_gets_few_places_and_keeps_the_rest_of_the_configuration(
    tmp_path: Path,
) -> None:
    settings = load_settings(few_places_config(config_path(), tmp_path / "c.yaml", 8))
    assert settings.limits.max_requests_in_flight == 8
    assert settings.model_dump() == {
        **load_settings(config_path()).model_dump(),
        "limits": settings.limits.model_dump(),
    }


def test_the_report_says_when_the_flood_p99_breaks_the_slo() -> None:
    def phase(p99: float) -> dict:
        heat = {"p50_ms": 10.0, "p95_ms": p99, "p99_ms": p99, "max_ms": p99, "statuses": {}}
        return {"heatflow": {**heat, "statuses": {"200": 5}}, "face_statuses": {"503": 3}}

    result = {"date": "d", "flooders": 16, "side": 2500, "in_flight": 8, "slo_p99_ms": 500.0}
    assert "within the SLO" in render({**result, "quiet": phase(9.0), "flood": phase(120.0)})
    report = render({**result, "quiet": phase(9.0), "flood": phase(750.0)})
    assert "OVER the SLO" in report and "| flood | 5 × 200 |" in report
