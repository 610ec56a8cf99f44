"""The OCI image from `make container`, run with podman: every family answers from inside it.

`make container-test` builds the image and runs this module with DESPLIEGUE_IMAGE set. The
container gets a configuration file mounted at run time (DESPLIEGUE_CONFIG), so the test also
proves that operators configure the image without rebuilding it.
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
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import tests.conftest as shared
from tests.conftest import ROOT, LiveServer, free_port, served_requests

pytestmark = pytest.mark.container

IMAGE = os.environ.get("DESPLIEGUE_IMAGE", "")
READY_TIMEOUT_S = 300
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


@contextlib.contextmanager
def running(
    folder: Path, *run_options: str, command: tuple[str, ...] = (), port: int
) -> Iterator[LiveServer]:
    """`podman run` the image (removed afterwards, whatever happens); the server on `port`."""
    name = f"despliegue-test-{uuid.uuid4().hex[:8]}"
    log_path = folder / f"{name}.log"
    environment = [f"--env={key}={value}" for key, value in server_env().items()]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["podman", "run", "--rm", "--name", name, *run_options, *environment, IMAGE, *command],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process)
    finally:
        podman("rm", "-f", "-t", "10", name, check=False)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, float]]:
    """The image running on a loopback port; yields the server and its cold start in seconds."""
    folder = tmp_path_factory.mktemp("container")
    (folder / "config").mkdir()
    config = mounted_configuration(folder / "config")
    port = free_port()
    started = time.monotonic()
    with running(
        folder,
        *("-p", f"127.0.0.1:{port}:3000", "-v", f"{config.parent}:/etc/despliegue:ro"),
        *("-e", "DESPLIEGUE_CONFIG=/etc/despliegue/configuration.yaml"),
        port=port,
    ) as server:
        yield server, wait_until_ready(server) - started


def wait_until_ready(server: LiveServer) -> float:
    """Poll /readyz until 200; return the monotonic time it first answered.

    Short per-request timeouts: until the server listens, a connection through podman's port
    forwarding can hang rather than be refused.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log()[-4000:]
            pytest.fail(f"container exited with {server.process.returncode}:\n{log}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"container not ready in {READY_TIMEOUT_S} s:\n{server.log()[-4000:]}")


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


def test_every_family_answers_from_the_image(container: tuple[LiveServer, float]) -> None:
    """Each endpoint is called with its documented examples; every family listed by
    GET /models must be named, by model tag, in at least one answer."""
    server, cold_start_s = container
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


def test_mounted_configuration_is_in_force(container: tuple[LiveServer, float]) -> None:
    server, _ = container
    oversized = json.dumps({"sediment_thickness_m": [1.0] * 300_000})
    assert len(oversized) > MOUNTED_MAX_BODY_BYTES
    response = server.post("/heatflow", oversized)
    assert response.status_code == 413, response.text


def test_image_runs_as_non_root_with_a_readiness_healthcheck(
    container: tuple[LiveServer, float],
) -> None:
    (config,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    healthcheck = config.get("Healthcheck") or config.get("HealthCheck") or {}
    assert "/readyz" in " ".join(healthcheck.get("Test", [])), config.get("Config")
    user = config.get("User") or config["Config"].get("User")
    assert user and user not in ("root", "0"), user


def test_split_tiers_run_from_the_same_image(tmp_path: Path) -> None:
    """deploy/k8s/split: a runner tier alone, and an API tier that reaches it by URL."""
    runner_port, api_port = free_port(), free_port()
    serve = ("python", "-m", "despliegue.serving", "--host", "127.0.0.1", "--port")
    common = ("--network", "host", "-e", "PYTHONPATH=/home/bentoml/bento/src")
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
        wait_until_ready(api)
        response = api.post("/heatflow", {"sediment_thickness_m": [100.0]})
        assert response.status_code == 200, response.text
        # The runner tier's own /metrics counted the call (written after the response).
        deadline = time.monotonic() + 10
        while served_requests(runner.get("/metrics").text, "/predict") < 1:
            assert time.monotonic() < deadline, runner.log()[-3000:]
            time.sleep(0.2)
        assert "Service HeatFlowRegressor initialized" not in api.log()
