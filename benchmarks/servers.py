"""Start, time and stop what the benchmark measures: the real `bentoml serve`, the seed-style
uvicorn apps, and the pinned helper processes (load generator, in-process limit, locust).

Every child is started in its own session with its CPU set fixed by os.sched_setaffinity
before exec (inherited by BentoML's worker processes), and stopped by its process group.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VERSIONED = ("bentoml", "scikit-learn", "numpy", "fastapi", "uvicorn", "aiohttp", "locust")


def server_env(home: str, **extra: str) -> dict[str, str]:
    """This process's environment as a benchmarked server gets it: its models from `home`,
    no usage telemetry, TensorFlow's start-up chatter off, and `extra` (e.g. PYTHONPATH)."""
    return {
        **os.environ,
        "BENTOML_HOME": home,
        "BENTOML_DO_NOT_TRACK": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    }


def scratch_folder(prefix: str) -> Path:
    """A temporary folder for a run's store, configurations and server logs. It is removed when
    the run ends, unless the run died of an error: then it stays, for its logs, and says where."""
    folder = Path(tempfile.mkdtemp(prefix=f"despliegue-{prefix}-"))

    def remove_unless_failed() -> None:
        if getattr(sys, "last_value", None) is not None:
            print(f"kept for its logs: {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove_unless_failed)
    return folder


def split_cpus(available: Sequence[int]) -> tuple[list[int], list[int]]:
    """Server CPUs and client CPUs: the client gets the last CPU, the server the others.

    On 2 cores that is one core each: the load generator cannot take the server's core, and
    the server (every BentoML process) cannot take the client's. With one CPU they share it.
    """
    cpus = sorted(available)
    if len(cpus) < 2:
        return cpus, cpus
    return cpus[:-1], cpus[-1:]


def pinned(cpus: Sequence[int]):
    """A preexec_fn that pins the child (and everything it forks) to `cpus`."""

    def pin() -> None:
        os.sched_setaffinity(0, set(cpus))

    return pin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]


def spawn(
    argv: list[str], env: dict[str, str], cpus: Sequence[int], log_path: Path, port: int
) -> Server:
    started_at = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pinned(cpus),
        )
    return Server(process, f"http://127.0.0.1:{port}", log_path, started_at)


def start_bentoml(env: dict[str, str], cpus: Sequence[int], log_path: Path) -> Server:
    """`bentoml serve` on loopback with auth off (DESPLIEGUE_AUTH=off): the seed designs and
    `mlflow models serve` check no token either, and the load generator sends none."""
    port = free_port()
    argv = [str(BIN / "bentoml"), "serve", "service:Despliegue", "--host", "127.0.0.1"]
    env = {**env, "DESPLIEGUE_AUTH": "off"}
    return spawn([*argv, "--port", str(port)], env, cpus, log_path, port)


def start_mlflow(
    model_dir: str, env: dict[str, str], cpus: Sequence[int], log_path: Path
) -> Server:
    """Seed 003's design: `mlflow models serve` (one uvicorn worker, its default) on a model
    folder, in this environment (--env-manager local: no network, no new virtualenv)."""
    port = free_port()
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", model_dir, "--env-manager", "local"]
    # mlflow execs `uvicorn` by name: this environment's must come first on PATH.
    env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    return spawn([*argv, "-h", "127.0.0.1", "-p", str(port)], env, cpus, log_path, port)


def start_uvicorn(app: str, env: dict[str, str], cpus: Sequence[int], log_path: Path) -> Server:
    """One uvicorn process, one worker: the seeds' own way of serving."""
    port = free_port()
    argv = [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port)]
    return spawn([*argv, "--log-level", "warning", "--no-access-log"], env, cpus, log_path, port)


def wait_for(server: Server, routes: Sequence[str], timeout: float = 240.0) -> dict[str, float]:
    """Seconds from the server's start to the first 200 on each route, in order."""
    reached: dict[str, float] = {}
    deadline = server.started_at + timeout
    for route in routes:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no 200 on {route} within {timeout:g} s:\n{server.log_tail()}")
            try:
                if httpx.get(server.url + route, timeout=5).status_code == 200:
                    reached[route] = time.monotonic() - server.started_at
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    return reached


def named_processes(server: Server) -> list[tuple[str, psutil.Process]]:
    """Every process of the server with its name: a BentoML worker by its `--service-name`,
    the root as "supervisor" (processes that exit meanwhile are left out)."""
    named = []
    root = psutil.Process(server.process.pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            argv = process.cmdline()
            name = argv[argv.index("--service-name") + 1] if "--service-name" in argv else None
            named.append(
                (name or ("supervisor" if process.pid == root.pid else process.name()), process)
            )
    return named


def process_cpu(server: Server) -> dict[str, float]:
    """CPU seconds each process of the server has used so far, by name: where a cold start's
    time went."""
    spent: dict[str, float] = {}
    for name, process in named_processes(server):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            spent[name] = spent.get(name, 0.0) + times.user + times.system
    return spent


def wait_for_log(server: Server, text: str, timeout: float = 240.0) -> float:
    """Seconds from the server's start until `text` appears in its log."""
    deadline = server.started_at + timeout
    while text not in server.log_path.read_text(encoding="utf-8", errors="replace"):
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} within {timeout:g} s:\n{server.log_tail()}")
        time.sleep(0.1)
    return time.monotonic() - server.started_at


def stop(server: Server, leader_first: bool = False) -> None:
    """SIGTERM the server's process group and wait, so the next one starts on a quiet CPU.

    `leader_first`: signal the started process alone and give it time to stop what it
    started (Ray's driver shuts its cluster down). Processes it started in sessions of their
    own are found beforehand and stopped by their ids if still running afterwards.
    """
    descendants = psutil.Process(server.process.pid).children(recursive=True)
    if server.process.poll() is None:
        if leader_first:
            server.process.send_signal(signal.SIGTERM)
        else:
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=60 if leader_first else 30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)  # workers left in the group
    for process in descendants:
        with contextlib.suppress(psutil.Error):
            process.kill()


def run_json(argv: list[str], env: dict[str, str], cpus: Sequence[int], timeout: float) -> Any:
    """Run a pinned helper (`python -m benchmarks.X ...`) and parse the JSON it prints."""
    completed = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=pinned(cpus),
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout)


def config_variant(source: Path, target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the configuration at `target`, with `change` applied to its parsed YAML."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    change(raw)
    target.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return target


def batching_off_config(source: Path, target: Path) -> Path:
    """A copy of the configuration with `batching.enabled: false` for every family: each
    request's items reach the runner method as they came, one call per request."""

    def batching_off(raw: dict[str, Any]) -> None:
        for family in raw["families"].values():
            family["batching"]["enabled"] = False

    return config_variant(source, target, batching_off)


def drift_off_config(source: Path, target: Path) -> Path:
    """A copy of the configuration with drift capture off: what monitoring costs a request."""
    return config_variant(source, target, lambda raw: raw["drift"].update(capture=False))


def detector_config(source: Path, target: Path, model: str) -> Path:
    """A copy of the configuration whose face family serves another stored detector."""
    return config_variant(
        source, target, lambda raw: raw["families"]["face_detector"].update(model=model)
    )


def few_places_config(source: Path, target: Path, in_flight: int) -> Path:
    """A copy of the configuration whose API worker answers at most `in_flight` requests at
    once (`limits.max_requests_in_flight`), so a flood fills its places."""
    return config_variant(
        source, target, lambda raw: raw["limits"].update(max_requests_in_flight=in_flight)
    )


def machine(server_cpus: Sequence[int], client_cpus: Sequence[int]) -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in (*VERSIONED, "tensorflow-cpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "server_cpus": list(server_cpus),
        "client_cpus": list(client_cpus),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
