"""Scale-out layout: a runner served alone, and the API reaching it by URL (despliegue.serving).

This is what deploy/k8s/split/ runs: one process tree per tier, wired only by environment
variables, with no change to the service code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import tests.conftest as shared
from tests.conftest import (
    ROOT,
    LiveServer,
    free_port,
    private_home,
    runner_apart_config,
    served_requests,
    stop_server,
    wait_until_serving,
)

pytestmark = pytest.mark.integration


def server_env() -> dict[str, str]:
    """What every server a test starts needs: the session's API tokens, when the suite has them."""
    lines = getattr(shared, "SESSION_TOKEN_LINES", "")
    return {"DESPLIEGUE_TOKENS": lines} if lines else {}


def start_tier(home: str, log_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "despliegue.serving", "service:Despliegue"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": home, **server_env(), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_api_reaches_a_runner_served_apart_by_url(reference_store: str, tmp_path: Path) -> None:
    runner_port, api_port = free_port(), free_port()
    runner_log, api_log = tmp_path / "runner.log", tmp_path / "api.log"
    # Each tier is its own server, with its own home (as in its own pod).
    runner_home = private_home(reference_store, tmp_path / "runner")
    api_home = private_home(reference_store, tmp_path / "api")
    # Heat flow is answered inside the API worker unless configured apart (placement): both
    # tiers read the same configuration, as the pods of deploy/k8s/split share one ConfigMap.
    config = str(runner_apart_config(tmp_path, "heatflow"))
    runner = start_tier(
        runner_home,
        runner_log,
        runner_port,
        DESPLIEGUE_SERVICE="HeatFlowRegressor",
        DESPLIEGUE_CONFIG=config,
    )
    api = start_tier(
        api_home,
        api_log,
        api_port,
        DESPLIEGUE_REMOTE_SERVICES=f'{{"HeatFlowRegressor": "http://127.0.0.1:{runner_port}"}}',
        DESPLIEGUE_CONFIG=config,
    )
    try:
        server = LiveServer(url=f"http://127.0.0.1:{api_port}", log_path=api_log, process=api)
        wait_until_serving(server.url, api, api_log)
        response = server.post("/heatflow", {"sediment_thickness_m": [100.0, 2000.0]})
        assert response.status_code == 200, response.text
        assert response.json()["model"].startswith("heatflow_svr:")
        # The prediction ran in the runner tier, not in a runner the API started itself: the
        # runner tier's own /metrics counted the call (metrics are written after the response,
        # so allow them a moment).
        deadline = time.monotonic() + 10
        runner_metrics = f"http://127.0.0.1:{runner_port}/metrics"
        while served_requests(httpx.get(runner_metrics, timeout=10).text, "/predict") < 1:
            assert time.monotonic() < deadline, runner_log.read_text()[-3000:]
            time.sleep(0.2)
        assert "Service HeatFlowRegressor initialized" not in server.log()
    finally:
        stop_server(api)
        stop_server(runner)


def test_a_runner_answered_inside_the_api_is_no_tier_and_start_up_says_how(
    reference_store: str, tmp_path: Path
) -> None:
    """With heat flow in the API worker (its default) there is no HeatFlowRegressor tier to
    serve: start-up stops naming the setting that makes one."""
    home = private_home(reference_store, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "despliegue.serving", "service:Despliegue"],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": home, "DESPLIEGUE_SERVICE": "HeatFlowRegressor"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "placement" in result.stderr and "heatflow: runner" in result.stderr, result.stderr


def test_a_malformed_remote_map_stops_start_up_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "despliegue.serving", "service:Despliegue"],
        cwd=ROOT,
        env={**os.environ, "DESPLIEGUE_REMOTE_SERVICES": '{"HeatFlowRegressor": "ftp://x"}'},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DESPLIEGUE_REMOTE_SERVICES" in result.stderr
