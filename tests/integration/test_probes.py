"""Probes, telemetry and scraping as an operator meets them, on servers started the shipped ways.

Each server here starts as a layout ships it (`make serve`, or `python -m despliegue.serving` as
the image and the Kubernetes manifests run it), without BENTOML_DO_NOT_TRACK in its environment
(so the product's own default is what is tested) and with tests/network_guard on its PYTHONPATH,
which logs and refuses any attempt to reach another host.

Probing follows a Kubernetes probe, from the moment the server process is launched
(tests/probing.py says how, and what every answer must be).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import tests.conftest as shared
from tests.conftest import ROOT, LiveServer, free_port, private_home, stop_server
from tests.probing import (
    FAMILIES,
    ProbeAnswer,
    assert_truthful,
    is_ready,
    names_not_ready,
    probe_until,
)

pytestmark = pytest.mark.integration

GUARD = ROOT / "tests" / "network_guard"
OUTBOUND_MARKER = "OUTBOUND CONNECTION ATTEMPT"
START_DEADLINE_S = 300
SCRAPE_ONLY = ("--allow", "metrics")


def server_env(home: str, **extra: str) -> dict[str, str]:
    """The test session's environment as a fresh shell would have it: no telemetry switch,
    the network guard on PYTHONPATH, the session's model store."""
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_DO_NOT_TRACK"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD), env.get("PYTHONPATH")]))
    return {**env, "BENTOML_HOME": home, **extra}


def launch(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server and every worker it started: circus gives each worker its own session,
    so one stopped while still starting could outlive its supervisor."""
    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    stop_server(process)
    _, alive = psutil.wait_procs(workers, timeout=30)
    for worker in alive:
        worker.kill()


def outbound_attempts(server: LiveServer) -> list[str]:
    return [line for line in server.log().splitlines() if OUTBOUND_MARKER in line]


def metrics_token() -> tuple[str, str]:
    """A scrape-only token made as docs/operations.md says: (hash line, token)."""
    made = subprocess.run(
        [sys.executable, "-m", "despliegue.tokens", "new", *("--id", "prometheus"), *SCRAPE_ONLY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip(), made.stderr.strip().splitlines()[-1]


@dataclass
class StartedServer:
    server: LiveServer
    launched: float
    start_up: list[ProbeAnswer]
    metrics_token: str


@pytest.fixture(scope="module")
def serving(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartedServer]:
    """The whole service as the image runs it (`python -m despliegue.serving`), auth on with the
    session's tokens plus a scrape-only one, probed from the moment it is launched."""
    line, token = metrics_token()
    port = free_port()
    log_path = tmp_path_factory.mktemp("serving") / "serve.log"
    tokens = "\n".join([shared.SESSION_TOKEN_LINES, line])
    home = private_home(reference_store, tmp_path_factory.mktemp("serving-home"))
    env = server_env(home, DESPLIEGUE_TOKENS=tokens)
    command = [
        sys.executable,
        "-m",
        "despliegue.serving",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    launched = time.monotonic()
    process = launch(command, env, log_path)
    server = LiveServer(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process)
    try:
        start_up = probe_until(server, launched, is_ready, START_DEADLINE_S)
        yield StartedServer(server, launched, start_up, token)
    finally:
        stop(process)


def test_probes_answer_from_the_first_moment_of_start_up(serving: StartedServer) -> None:
    answers = serving.start_up
    assert_truthful(answers)
    first = next(a for a in answers if a.status is not None)
    ready = next(a for a in answers if is_ready(a))
    print(f"\nfirst answer {first.at_s:.1f} s after launch, ready at {ready.at_s:.1f} s")


def test_log_says_when_the_service_is_ready(serving: StartedServer) -> None:
    line = serving.server.log_lines_with("ready: serving")[0]
    families = ", ".join(FAMILIES)
    assert line.endswith(f"ready: serving 5 families ({families}) at {serving.server.url}, auth on")


def test_prometheus_scrapes_metrics_with_the_shipped_configuration(serving: StartedServer) -> None:
    """The ServiceMonitor's endpoint (path, Authorization type) with the scrape-only token."""
    manifest = ROOT / "deploy" / "k8s" / "monitoring" / "servicemonitor.yaml"
    (endpoint,) = yaml.safe_load(manifest.read_text(encoding="utf-8"))["spec"]["endpoints"]
    url = f"{serving.server.url}{endpoint['path']}"
    credentials = {"authorization": f"{endpoint['authorization']['type']} {serving.metrics_token}"}

    scraped = httpx.get(url, headers=credentials, timeout=10)
    assert scraped.status_code == 200, scraped.text
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert any(name.startswith("bentoml_service_") for name in names), sorted(names)[:20]

    assert httpx.get(url, timeout=10).status_code == 401
    for path, body in (("/heatflow", {"sediment_thickness_m": [100.0]}), ("/models", None)):
        refused = httpx.request(
            "POST" if body else "GET",
            f"{serving.server.url}{path}",
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
    serving: StartedServer,
) -> None:
    server = serving.server
    runner_process(server, "FlowerClassifier").send_signal(signal.SIGKILL)
    launched = serving.launched

    down = probe_until(server, launched, names_not_ready("flowers"), 60)
    back = probe_until(server, launched, is_ready, START_DEADLINE_S)
    assert_truthful(down + back)
    reason = down[-1].body["not_ready"]["flowers"]  # type: ignore[index]
    assert reason.startswith("FlowerClassifier: "), reason

    stopped = server.log_lines_with("not ready: ")
    assert any("flowers: FlowerClassifier: " in line for line in stopped), stopped
    assert len(server.log_lines_with("ready: serving")) >= 2


def test_nothing_tried_to_leave_the_machine(serving: StartedServer) -> None:
    stop(serving.server.process)
    assert outbound_attempts(serving.server) == []


def test_make_serve_probes_truthfully_with_telemetry_off(
    reference_store: str, tmp_path: Path
) -> None:
    """`make serve`, as the README says, from a shell without BENTOML_DO_NOT_TRACK."""
    port = free_port()
    venv = Path(sys.prefix)
    command = ["make", "-s", "-o", "venv", f"VENV={venv}", f"PORT={port}", "serve"]
    log_path = tmp_path / "make-serve.log"
    launched = time.monotonic()
    process = launch(command, server_env(private_home(reference_store, tmp_path)), log_path)
    server = LiveServer(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process)
    try:
        answers = probe_until(server, launched, is_ready, START_DEADLINE_S)
        assert_truthful(answers)
        (line,) = server.log_lines_with("ready: serving")
        assert line.endswith(f"at {server.url}, auth off"), line
    finally:
        stop(process)
    assert outbound_attempts(server) == []


def test_the_guard_sees_telemetry_when_an_operator_turns_it_on(
    reference_store: str, tmp_path: Path
) -> None:
    """The check above can fail: with BENTOML_DO_NOT_TRACK=false, BentoML's usage report is
    caught (and refused) by the guard. A runner tier alone is enough to start BentoML's server."""
    port = free_port()
    env = server_env(
        private_home(reference_store, tmp_path),
        BENTOML_DO_NOT_TRACK="false",
        DESPLIEGUE_SERVICE="HeatFlowRegressor",
    )
    command = [
        sys.executable,
        "-m",
        "despliegue.serving",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log_path = tmp_path / "tracked.log"
    process = launch(command, env, log_path)
    server = LiveServer(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process)
    try:
        attempts = server.log_lines_with(OUTBOUND_MARKER, wait_s=60)
    finally:
        stop(process)
    assert attempts and "t.bentoml.com" in attempts[0], server.log()[-3000:]
