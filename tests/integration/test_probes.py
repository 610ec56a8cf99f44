"""Probes, telemetry and scraping as an operator meets them, on servers started the shipped ways.

Each server here starts as a layout ships it (`python -m despliegue.serving`, as the image and
the Kubernetes manifests run it), without BENTOML_DO_NOT_TRACK in its environment (so the
product's own default is what is tested) and with tests/network_guard on its PYTHONPATH, which
logs and refuses any attempt to reach another host. The whole service is the session's shared
server (tests/conftest.py: `session_server`), probed from its launch; `make serve` is probed the
same way where the README's commands run it (tests/integration/test_readme_commands.py).

Probing follows a Kubernetes probe, from the moment the server process is launched
(tests/probing.py says how, and what every answer must be).
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    OUTBOUND_MARKER,
    ROOT,
    START_DEADLINE_S,
    LiveServer,
    StartedServer,
    free_port,
    launch,
    outbound_attempts,
    private_home,
    runner_apart_config,
    shipped_env,
    shipped_serve_command,
    stop_with_workers,
)
from tests.probing import (
    FAMILIES,
    assert_truthful,
    is_ready,
    names_not_ready,
    probe_until,
)

pytestmark = pytest.mark.integration


def test_probes_answer_from_the_first_moment_of_start_up(session_server: StartedServer) -> None:
    answers = session_server.start_up
    assert_truthful(answers)
    first = next(a for a in answers if a.status is not None)
    ready = next(a for a in answers if is_ready(a))
    print(f"\nfirst answer {first.at_s:.1f} s after launch, ready at {ready.at_s:.1f} s")


def test_log_says_when_the_service_is_ready(session_server: StartedServer) -> None:
    line = session_server.server.log_lines_with("ready: serving")[0]
    families = ", ".join(FAMILIES)
    assert line.endswith(
        f"ready: serving 5 families ({families}) at {session_server.server.url}, auth on"
    )


def test_prometheus_scrapes_metrics_with_the_shipped_configuration(
    session_server: StartedServer,
) -> None:
    """The ServiceMonitor's endpoint (path, Authorization type) with the scrape-only token."""
    manifest = ROOT / "deploy" / "k8s" / "monitoring" / "servicemonitor.yaml"
    (endpoint,) = yaml.safe_load(manifest.read_text(encoding="utf-8"))["spec"]["endpoints"]
    url = f"{session_server.server.url}{endpoint['path']}"
    credentials = {
        "authorization": f"{endpoint['authorization']['type']} {session_server.metrics_token}"
    }

    scraped = httpx.get(url, headers=credentials, timeout=10)
    assert scraped.status_code == 200, scraped.text
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert any(name.startswith("bentoml_service_") for name in names), sorted(names)[:20]

    assert httpx.get(url, timeout=10).status_code == 401
    for path, body in (("/heatflow", {"sediment_thickness_m": [100.0]}), ("/models", None)):
        refused = httpx.request(
            "POST" if body else "GET",
            f"{session_server.server.url}{path}",
            json=body,
            headers=credentials,
            timeout=10,
        )
        assert refused.status_code == 403, (path, refused.text)


def runner_process(server: LiveServer, service_name: str) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if (
            "--service-name" in command
            and command[command.index("--service-name") + 1] == service_name
        ):
            return child
    pytest.fail(f"no process serves {service_name}")


def test_a_killed_runner_turns_readyz_503_naming_it_until_it_is_back(
    session_server: StartedServer,
) -> None:
    server = session_server.server
    runner_process(server, "FlowerClassifier").send_signal(signal.SIGKILL)
    launched = session_server.launched

    down = probe_until(server, launched, names_not_ready("flowers"), 60)
    back = probe_until(server, launched, is_ready, START_DEADLINE_S)
    assert_truthful(down + back)
    reason = down[-1].body["not_ready"]["flowers"]  # type: ignore[index]
    assert reason.startswith("FlowerClassifier: "), reason

    stopped = server.log_lines_with("not ready: ")
    assert any("flowers: FlowerClassifier: " in line for line in stopped), stopped
    assert len(server.log_lines_with("ready: serving")) >= 2


def test_nothing_tried_to_leave_the_machine(session_server: StartedServer) -> None:
    """So far; the session server's teardown checks its whole log again when it stops."""
    assert outbound_attempts(session_server.server.log()) == []


def test_the_guard_sees_telemetry_when_an_operator_turns_it_on(
    reference_store: str, tmp_path: Path
) -> None:
    """The check above can fail: with BENTOML_DO_NOT_TRACK=false, BentoML's usage report is
    caught (and refused) by the guard. A runner tier alone is enough to start BentoML's server."""
    port = free_port()
    env = shipped_env(
        private_home(reference_store, tmp_path),
        BENTOML_DO_NOT_TRACK="false",
        DESPLIEGUE_SERVICE="HeatFlowRegressor",
        DESPLIEGUE_CONFIG=str(runner_apart_config(tmp_path, "heatflow")),
    )
    log_path = tmp_path / "tracked.log"
    process = launch(shipped_serve_command(port), env, log_path)
    server = LiveServer(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process)
    try:
        attempts = server.log_lines_with(OUTBOUND_MARKER, wait_s=60)
    finally:
        stop_with_workers(process)
    assert attempts and "t.bentoml.com" in attempts[0], server.log()[-3000:]
