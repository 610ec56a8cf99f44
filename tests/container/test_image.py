"""The OCI image from `make container`, run with podman: every family answers from inside it.

`make container-test` builds the image and runs this module with DESPLIEGUE_IMAGE set. The
container gets a configuration file mounted at run time (DESPLIEGUE_CONFIG), so the test also
proves that operators configure the image without rebuilding it. It is probed from the moment
`podman run` starts, as Kubernetes probes it (tests/probing.py), and runs with the network
guard (tests/network_guard) on its PYTHONPATH: an attempt to reach another host is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.conftest as shared
from despliegue.http.probes import ANSWER_WITHIN_S
from tests.conftest import ROOT, LiveServer, free_port, runner_apart_config, served_requests
from tests.probing import (
    ProbeAnswer,
    assert_truthful,
    is_ready,
    names_not_ready,
    probe_until,
)

pytestmark = pytest.mark.container

IMAGE = os.environ.get("DESPLIEGUE_IMAGE", "")
READY_TIMEOUT_S = 300
GUARD = ROOT / "tests" / "network_guard"
OUTBOUND_MARKER = "OUTBOUND CONNECTION ATTEMPT"
BENTO_SRC = "/home/bentoml/bento/src"
# Lower than configuration.yaml's, so a 413 proves the mounted file is the one in force.
MOUNTED_MAX_BODY_BYTES = 1_048_576

if not IMAGE:
    pytest.skip("DESPLIEGUE_IMAGE is not set: run `make container-test`", allow_module_level=True)
if shutil.which("podman") is None:
    pytest.skip("podman is not installed: run `make container-tools`", allow_module_level=True)


def server_env() -> dict[str, str]:
    """What every server a test starts needs: the session's API tokens, when the suite has them."""
    lines = getattr(shared, "SESSION_TOKEN_LINES", "")
    return {"DESPLIEGUE_TOKENS": lines} if lines else {}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=120, check=check
    )


def mounted_configuration(folder: Path) -> Path:
    """configuration.yaml with a lower body limit, as an operator would mount it."""
    settings = yaml.safe_load((ROOT / "configuration.yaml").read_text(encoding="utf-8"))
    settings["limits"]["max_body_bytes"] = MOUNTED_MAX_BODY_BYTES
    path = folder / "configuration.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    path.chmod(0o644)
    folder.chmod(0o755)
    return path


@dataclass
class Container(LiveServer):
    name: str = ""
    launched: float = 0.0  # time.monotonic() when `podman run` started


@contextlib.contextmanager
def running(
    folder: Path, *run_options: str, command: tuple[str, ...] = (), port: int
) -> Iterator[Container]:
    """`podman run` the image (removed afterwards, whatever happens); the server on `port`."""
    name = f"despliegue-test-{uuid.uuid4().hex[:8]}"
    launched = time.monotonic()
    log_path = folder / f"{name}.log"
    environment = [f"--env={key}={value}" for key, value in server_env().items()]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["podman", "run", "--rm", "--name", name, *run_options, *environment, IMAGE, *command],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        yield Container(url=url, log_path=log_path, process=process, name=name, launched=launched)
    finally:
        podman("rm", "-f", "-t", "10", name, check=False)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Started:
    server: Container
    cold_start_s: float
    start_up: list[ProbeAnswer]


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """The image, as its default command starts it, on a loopback port, probed until ready."""
    folder = tmp_path_factory.mktemp("container")
    (folder / "config").mkdir()
    config = mounted_configuration(folder / "config")
    port = free_port()
    with running(
        folder,
        *("-p", f"127.0.0.1:{port}:3000", "-v", f"{config.parent}:/etc/despliegue:ro"),
        *("-e", "DESPLIEGUE_CONFIG=/etc/despliegue/configuration.yaml"),
        *(
            "-v",
            f"{GUARD}:/opt/network-guard:ro",
            "-e",
            f"PYTHONPATH=/opt/network-guard:{BENTO_SRC}",
        ),
        port=port,
    ) as server:
        start_up = wait_until_ready(server)
        yield Started(server, start_up[-1].at_s, start_up)


def wait_until_ready(server: Container) -> list[ProbeAnswer]:
    """Probe from `podman run` on until /readyz answers 200; every answer is returned."""
    return probe_until(server, server.launched, is_ready, READY_TIMEOUT_S)


def example_arguments(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Keyword arguments from the examples an endpoint's request schema documents; None when a
    field has none (file uploads)."""
    arguments = {}
    for field, spec in schema.get("properties", {}).items():
        examples = spec.get("examples") or ([spec["example"]] if "example" in spec else [])
        if not examples and "default" in spec:
            examples = [spec["default"]]
        if not examples:
            return None
        example = examples[0]
        # A field that takes one item or a list may document a single item as its example.
        if spec.get("type") == "array" and not isinstance(example, list):
            example = [example]
        arguments[field] = example
    return arguments


def test_probes_answer_truthfully_from_the_start(container: Started) -> None:
    """Until podman's port forwarding reaches a listening server a probe may fail in any way;
    from the first answer on, every answer is as tests/probing.py says."""
    assert_truthful(container.start_up, before_listening=None)


def test_every_family_answers_from_the_image(container: Started) -> None:
    """Each endpoint is called with its documented examples; every family listed by
    GET /models must be named, by model tag, in at least one answer."""
    server, cold_start_s = container.server, container.cold_start_s
    served = server.get("/models").json()["models"]
    families = {card["family"] for card in served}
    assert {"heatflow", "falsetrue"} <= families
    answered: dict[str, str] = {}
    with server.client() as client:
        for endpoint in sorted(client.endpoints.values(), key=lambda e: e.route):
            arguments = example_arguments(endpoint.input)
            if arguments is None:
                continue
            answer = json.dumps(client.call(endpoint.name, **arguments))
            for card in served:
                if card["tag"] in answer:
                    answered.setdefault(card["family"], endpoint.route)
    assert answered.keys() == families, (
        f"families no endpoint answered for: {families - answered.keys()}"
    )
    report = {
        "image": IMAGE,
        "cold_start_s": round(cold_start_s, 1),
        "answered": dict(sorted(answered.items())),
    }
    print(f"\ncontainer test: {json.dumps(report)}")
    if path := os.environ.get("DESPLIEGUE_CONTAINER_REPORT"):
        Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def test_mounted_configuration_is_in_force(container: Started) -> None:
    server = container.server
    oversized = json.dumps({"sediment_thickness_m": [1.0] * 300_000})
    assert len(oversized) > MOUNTED_MAX_BODY_BYTES
    response = server.post("/heatflow", oversized)
    assert response.status_code == 413, response.text


def image_config() -> dict[str, Any]:
    (config,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    return config


def test_image_runs_as_non_root_with_a_readiness_healthcheck(container: Started) -> None:
    config = image_config()
    healthcheck = config.get("Healthcheck") or config["Config"].get("Healthcheck") or {}
    assert "/readyz" in " ".join(healthcheck.get("Test", [])), config.get("Config")
    assert healthcheck["Timeout"] / 1e9 > ANSWER_WITHIN_S, healthcheck
    user = config.get("User") or config["Config"].get("User")
    assert user and user not in ("root", "0"), user


def test_image_starts_through_despliegue_serving_with_telemetry_off(container: Started) -> None:
    settings = image_config()["Config"]
    assert settings["Cmd"] == ["python", "-m", "despliegue.serving"], settings
    assert "BENTOML_DO_NOT_TRACK=true" in settings["Env"], settings["Env"]
    serving = podman("exec", container.server.name, "python3", "-c", PROCESS_ENVIRONMENTS).stdout
    environments = json.loads(serving)
    assert environments, "no server process found in the container"
    for command, environment in environments.items():
        assert environment.get("BENTOML_DO_NOT_TRACK") == "true", command


# Run inside the container: the command line and environment of every Python process there.
PROCESS_ENVIRONMENTS = """
import json, os, pathlib
found = {}
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    if proc.name == str(os.getpid()):
        continue
    try:
        command = (proc / "cmdline").read_bytes().replace(b"\\0", b" ").decode().strip()
        pairs = (proc / "environ").read_bytes().split(b"\\0")
    except OSError:
        continue
    if "despliegue.serving" in command or "_bentoml_impl.worker" in command:
        found[command] = dict(p.decode().partition("=")[::2] for p in pairs if b"=" in p)
print(json.dumps(found))
"""


def test_a_killed_runner_is_named_by_readyz_and_comes_back(container: Started) -> None:
    server = container.server
    # The antibiotic panel: the lightest runner with a process of its own (heat flow and
    # false/true are answered inside the API worker).
    killed = podman("exec", server.name, "python3", "-c", KILL_RUNNER, "AntibioticPanel")
    assert killed.stdout.strip().isdigit(), killed
    down = probe_until(server, server.launched, names_not_ready("antibiotics"), 60)
    back = probe_until(server, server.launched, is_ready, READY_TIMEOUT_S)
    assert_truthful(down + back)
    not_ready = server.log_lines_with("not ready")
    assert any("antibiotics: AntibioticPanel" in line for line in not_ready), not_ready


# Run inside the container: SIGKILL the worker serving the service named in argv[1].
KILL_RUNNER = """
import os, pathlib, signal, sys
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    try:
        words = (proc / "cmdline").read_bytes().split(b"\\0")
    except OSError:
        continue
    if b"--service-name" in words and sys.argv[1].encode() in words:
        os.kill(int(proc.name), signal.SIGKILL)
        print(proc.name)
        break
"""


def test_nothing_in_the_container_tried_to_leave_the_machine(container: Started) -> None:
    assert "Service Despliegue initialized" in container.server.log()
    attempts = [line for line in container.server.log().splitlines() if OUTBOUND_MARKER in line]
    assert attempts == []


def test_split_tiers_run_from_the_same_image(tmp_path: Path) -> None:
    """deploy/k8s/split: a runner tier alone, and an API tier that reaches it by URL."""
    runner_port, api_port = free_port(), free_port()
    serve = ("python", "-m", "despliegue.serving", "--host", "127.0.0.1", "--port")
    # Heat flow is answered inside the API worker unless configured apart: both tiers mount a
    # configuration placing it in a runner, as the split pods share one ConfigMap.
    (tmp_path / "config").mkdir()
    config = runner_apart_config(tmp_path / "config", "heatflow")
    config.chmod(0o644)
    (tmp_path / "config").chmod(0o755)
    common = (
        *("--network", "host", "-e", "PYTHONPATH=/home/bentoml/bento/src"),
        *("-v", f"{config.parent}:/etc/despliegue:ro"),
        *("-e", "DESPLIEGUE_CONFIG=/etc/despliegue/configuration.yaml"),
    )
    with (
        running(
            tmp_path,
            *common,
            *("-e", "DESPLIEGUE_SERVICE=HeatFlowRegressor"),
            command=(*serve, str(runner_port)),
            port=runner_port,
        ) as runner,
        running(
            tmp_path,
            *common,
            "-e",
            f'DESPLIEGUE_REMOTE_SERVICES={{"HeatFlowRegressor": "http://127.0.0.1:{runner_port}"}}',
            command=(*serve, str(api_port)),
            port=api_port,
        ) as api,
    ):
        wait_until_ready(runner)
        assert_truthful(wait_until_ready(api), before_listening=None)
        response = api.post("/heatflow", {"sediment_thickness_m": [100.0]})
        assert response.status_code == 200, response.text
        # The runner tier's own /metrics counted the call (written after the response).
        deadline = time.monotonic() + 10
        while served_requests(runner.get("/metrics").text, "/predict") < 1:
            assert time.monotonic() < deadline, runner.log()[-3000:]
            time.sleep(0.2)
        assert "Service HeatFlowRegressor initialized" not in api.log()
