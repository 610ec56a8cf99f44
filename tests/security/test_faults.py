"""Faults against real parts: killed workers, a killed import, a corrupted artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import psutil
import pytest
from sklearn.linear_model import LinearRegression

from tests.conftest import ROOT, LiveServer, run_save_models


def worker_pid(server: LiveServer, service: str) -> int:
    """PID of the worker process serving `service` under the server's arbiter."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == service:
            return child.pid
    raise AssertionError(f"no worker for {service}")


@pytest.mark.integration
@pytest.mark.parametrize("service", ["HeatFlowRegressor", "Despliegue"])
def test_a_killed_worker_is_replaced_and_requests_succeed_again(
    live_server: LiveServer, service: str
) -> None:
    """Four clients keep calling /heatflow; one worker gets SIGKILL. Recovery = time from the
    kill until a request sent after it succeeds."""
    victim = worker_pid(live_server, service)
    results: list[tuple[float, float, int | str]] = []  # (sent, answered, status)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=live_server.url, headers=live_server.headers, timeout=90) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status: int | str = c.post(
                        "/heatflow", json={"sediment_thickness_m": [700.0]}
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                results.append((sent, time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed_at + 180
        while time.monotonic() < deadline:
            if any(sent > killed_at and status == 200 for sent, _, status in results):
                break
            time.sleep(0.2)
        time.sleep(2)  # a little steady state after recovery
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after = [(sent, answered, status) for sent, answered, status in results if sent > killed_at]
    recovered = [answered for _, answered, status in after if status == 200]
    assert recovered, f"no request succeeded in 180 s after killing {service}"
    failed = [status for _, _, status in after if status != 200]
    last_failure = max((a for _, a, s in after if s != 200), default=killed_at)
    assert all(status == 200 for sent, _, status in after if sent > last_failure)
    replacement = worker_pid(live_server, service)
    assert replacement != victim
    print(
        f"\n{service} worker {victim} killed: replaced by {replacement}; first success "
        f"{min(recovered) - killed_at:.1f} s after the kill; {len(after)} requests after the "
        f"kill, {len(failed)} failed ({sorted(set(map(str, failed)))})"
    )


def store_versions(home: Path, name: str) -> set[str]:
    folder = home / "models" / name
    return {p.name for p in folder.iterdir() if p.name != "latest"} if folder.exists() else set()


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from despliegue.artifacts import save_to_store

def write_half_then_die(target: Path) -> None:
    data = Path(sys.argv[1]).read_bytes()
    with target.open("wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

save_to_store("heatflow_svr", family="heatflow", framework="sklearn",
              metadata={"reference": False}, write=write_half_then_die)
"""


def test_an_import_killed_mid_write_leaves_no_half_model_in_the_store(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    assert run_save_models(home=str(home)).returncode == 0
    before = store_versions(home, "heatflow_svr")
    artifact = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([1.0, 0.0])), artifact)
    result = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, str(artifact)],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL
    assert store_versions(home, "heatflow_svr") == before
    listing = run_save_models("list", home=str(home))
    assert listing.returncode == 0 and listing.stdout.count("heatflow_svr:") <= len(before)


@pytest.mark.parametrize("damage", ["truncated", "flipped-bytes"])
def test_a_corrupted_artifact_is_refused_at_import(tmp_path: Path, damage: str) -> None:
    home = tmp_path / "bentoml"
    assert run_save_models(home=str(home)).returncode == 0
    before = store_versions(home, "heatflow_svr")
    artifact = tmp_path / "damaged.joblib"
    model = LinearRegression().fit(np.array([[0.0], [5000.0]]), np.array([100.0, 50.0]))
    joblib.dump(model, artifact)
    data = bytearray(artifact.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(64)
    artifact.write_bytes(bytes(data))
    result = run_save_models("import", "heatflow_svr", str(artifact), home=str(home))
    assert result.returncode == 1, result.stderr
    assert "import refused" in result.stderr and "damaged.joblib" in result.stderr
    assert store_versions(home, "heatflow_svr") == before
