"""Two servers on one BENTOML_HOME: the second refuses to start, and the first keeps counting.

BentoML empties `$BENTOML_HOME/prometheus_multiproc_dir` when a server starts, which would
reset the running server's /metrics (despliegue/home_lock.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import LiveServer, served_requests, start_server, stop_server

pytestmark = pytest.mark.integration


def heatflow_count(server: LiveServer) -> float:
    return served_requests(server.get("/metrics").text, "/heatflow")


def test_a_second_server_on_the_same_home_refuses_and_the_first_keeps_its_metrics(
    live_server: LiveServer, reference_store: str, tmp_path: Path
) -> None:
    assert live_server.post("/heatflow", {"sediment_thickness_m": [100.0]}).status_code == 200
    deadline = time.monotonic() + 10
    while heatflow_count(live_server) < 1:  # metrics are written after the response
        assert time.monotonic() < deadline
        time.sleep(0.2)
    before = heatflow_count(live_server)

    log_path = tmp_path / "second.log"
    second = start_server(reference_store, log_path)
    try:
        exit_code = second.wait(timeout=180)
    finally:
        stop_server(second)
    log = log_path.read_text(errors="replace")
    assert exit_code != 0, log[-3000:]
    assert f"BENTOML_HOME={reference_store} is already used by a running server" in log, log
    assert "own BENTOML_HOME" in log

    assert live_server.post("/heatflow", {"sediment_thickness_m": [200.0]}).status_code == 200
    deadline = time.monotonic() + 10
    while heatflow_count(live_server) < before + 1:
        assert time.monotonic() < deadline, "the first server's metrics were reset"
        time.sleep(0.2)
