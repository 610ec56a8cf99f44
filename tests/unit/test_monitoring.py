"""deploy/monitoring: the alert rules pass promtool (syntax and their own unit tests), and the
dashboard and rules only name series the service exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from despliegue.drift.metrics import service_metrics
from despliegue.http.rejections import rejections
from tests.conftest import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool missing: install Debian's prometheus with scripts/test-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs promtool to check the alert rules: {reason}")
        pytest.skip(reason)
    return path


@pytest.mark.processes
def test_alert_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


@pytest.mark.processes
def test_alerts_fire_on_made_series_and_not_on_healthy_ones() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names() -> set[str]:
    """Names of the series the service's own metrics expose (counters end in _total): the
    models' answers and drift, and the refused inputs (despliegue/http/rejections.py)."""
    metrics = service_metrics()
    names = set()
    for metric in [*vars(metrics).values(), rejections()]:
        if not hasattr(metric, "collect"):
            continue
        for family in metric.collect():
            names.update(sample.name for sample in family.samples)
            names.add(family.name + ("_total" if family.type == "counter" else ""))
            if family.type == "histogram":
                names.update(f"{family.name}_{part}" for part in ("bucket", "sum", "count"))
    return names


def test_dashboard_and_rules_name_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(expressions) >= 8
    text = " ".join(expressions) + RULES.read_text()
    used = set(re.findall(r"\bdespliegue_[a-z_]+", text))
    assert {"despliegue_drift_detected", "despliegue_predictions_total"} <= used
    assert used <= exported_names(), used - exported_names()
