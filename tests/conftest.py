"""Fixtures shared by every tier: a private BentoML home, and one live server per session.

BENTOML_HOME is set before anything imports bentoml, so no test touches the user's store.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import psutil
import pytest

from despliegue.tokens import TOKENS_ENV, TOKENS_FILE_ENV, new_token

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SESSION_HOME = Path(tempfile.mkdtemp(prefix="despliegue-test-home-"))
# Each test process's store copy and tokens; gone with the process (a copy of the reference
# store per run would fill a disk that runs the suite often).
atexit.register(shutil.rmtree, SESSION_HOME, ignore_errors=True)
os.environ["BENTOML_HOME"] = str(SESSION_HOME / "bentoml")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
LIFECYCLE_STATE_ENV = "DESPLIEGUE_LIFECYCLE_STATE"


def lifecycle_state(home: str) -> str:
    """The lifecycle state file (what each family serves) of a BentoML home: beside it, so a
    test's imports and promotions only touch the servers of that home, never the repo's."""
    return str(Path(home).parent / "served.json")


os.environ[LIFECYCLE_STATE_ENV] = lifecycle_state(os.environ["BENTOML_HOME"])
for _name in (TOKENS_ENV, TOKENS_FILE_ENV, "DESPLIEGUE_AUTH"):
    os.environ.pop(_name, None)

# Servers run with auth on. Tokens are made for this session only: one that may call
# everything (used by every helper below) and one that may call heatflow only.
ADMIN_TOKEN, ADMIN_RECORD = new_token("test-admin", ["*"])
HEATFLOW_TOKEN, HEATFLOW_RECORD = new_token("test-heatflow", ["heatflow"])
SESSION_TOKEN_LINES = "\n".join((ADMIN_RECORD.line(), HEATFLOW_RECORD.line()))
SESSION_TOKENS = (ADMIN_TOKEN, HEATFLOW_TOKEN)
# The shared server also reads this tokens file (empty at start), which tests edit to add and
# revoke tokens while it runs.
SESSION_TOKENS_FILE = SESSION_HOME / "tokens.txt"
SESSION_TOKENS_FILE.write_text("# tokens added by tests while the server runs\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_requests(metrics_text: str, endpoint: str) -> float:
    """Requests a BentoML server answered 200 on `endpoint`, from its /metrics text: how a
    test tells which process tier served a call."""
    pattern = r"bentoml_service_request_total\{([^}]*)\} ([0-9.e+]+)"
    return sum(
        float(value)
        for labels, value in re.findall(pattern, metrics_text)
        if f'endpoint="{endpoint}"' in labels and 'http_response_code="200"' in labels
    )


def run_save_models(
    *args: str, home: str | None = None, columns: int = 200, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    home = home or os.environ["BENTOML_HOME"]
    env = {
        **os.environ,
        "BENTOML_HOME": home,
        LIFECYCLE_STATE_ENV: lifecycle_state(home),
        "COLUMNS": str(columns),
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "save_models.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@dataclass
class LiveServer:
    """A running server. Tests call it through these helpers, so that what every request
    needs (headers, credentials) is decided here, once."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_lines_with(self, text: str, wait_s: float = 10.0) -> list[str]:
        """The log lines holding `text`, waiting up to `wait_s` for worker output to land."""
        deadline = time.monotonic() + wait_s
        while True:
            found = [line for line in self.log().splitlines() if text in line]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    token: str = ADMIN_TOKEN

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def post(
        self, path: str, body: object, headers: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        """POST a JSON body; a str body is sent as is (for malformed JSON)."""
        content = body if isinstance(body, str | bytes) else json.dumps(body)
        headers = {"content-type": "application/json", **self.headers, **(headers or {})}
        url = f"{self.url}{path}"
        return httpx.post(url, content=content, headers=headers, timeout=60, **kwargs)

    def upload(
        self, path: str, files: list[tuple[str, tuple[str, bytes, str]]], data: dict | None = None
    ) -> httpx.Response:
        """POST multipart/form-data: files as (field, (filename, bytes, content type))."""
        url = f"{self.url}{path}"
        return httpx.post(url, files=files, data=data, headers=self.headers, timeout=60)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=60)

    def client(self) -> bentoml.SyncHTTPClient:
        return bentoml.SyncHTTPClient(self.url, token=self.token)

    def async_client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=60, **kwargs)


def start_server(
    home: str, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the real `bentoml serve` in its own process group, logging to `log_path`.

    It accepts the session's tokens unless `extra_env` says otherwise. Give each server its
    own `home`: `bentoml serve` empties the Prometheus folder of its home when it starts."""
    env = {
        **os.environ,
        "BENTOML_HOME": home,
        LIFECYCLE_STATE_ENV: lifecycle_state(home),
        TOKENS_ENV: SESSION_TOKEN_LINES,
        **(extra_env or {}),
    }
    port = env.pop("DESPLIEGUE_TEST_PORT", None) or str(free_port())
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(BIN / "bentoml"),
                "serve",
                "service:Despliegue",
                "--host",
                "127.0.0.1",
                "--port",
                port,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.port = int(port)  # type: ignore[attr-defined]
    return process


def wait_until_answers(
    url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    within_s: float = 240,
    **httpx_options: Any,
) -> None:
    """Wait for GET `url` to answer 200; fail with the log's end if the process exits first
    or `within_s` passes."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=5, **httpx_options).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not answering in {within_s:g} s:\n{log_path.read_text()[-4000:]}")


def wait_until_serving(
    url: str, process: subprocess.Popen[bytes], log_path: Path, **httpx_options: Any
) -> None:
    """Wait for /models to answer 200: it calls every runner, so all models are loaded."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    wait_until_answers(f"{url}/models", process, log_path, headers=headers, **httpx_options)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def serve(home: str | Path, log_path: Path, extra_env: dict[str, str] | None = None) -> LiveServer:
    """A real `bentoml serve` on `home` with every model loaded; stopped again if it never gets
    there. The caller stops it (`stop_server(server.process)`)."""
    process = start_server(str(home), log_path, extra_env)
    url = f"http://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
    try:
        wait_until_serving(url, process, log_path)
    except BaseException:
        stop_server(process)
        raise
    return LiveServer(url=url, log_path=log_path, process=process)


# What `python save_models.py` printed while building the session's reference store.
REFERENCE_BUILD_LOG = SESSION_HOME / "save_models.log"
# A model store built before the tests (`make test` builds one per run, for every worker; CI's
# later steps reuse it), and what that build printed. The session starts from a copy of it.
PREBUILT_MODELS = os.environ.get("DESPLIEGUE_TEST_MODELS")
PREBUILT_MODELS_LOG = os.environ.get("DESPLIEGUE_TEST_MODELS_LOG")


@pytest.fixture(scope="session")
def reference_store() -> str:
    """The session's BentoML home with every reference model built by save_models.py (on a
    copy of $DESPLIEGUE_TEST_MODELS when given: save_models.py then checks what it finds and
    builds only what is missing)."""
    if PREBUILT_MODELS:
        # A unit test may have opened the session's store already (its folders, no models).
        store = Path(os.environ["BENTOML_HOME"]) / "models"
        shutil.copytree(PREBUILT_MODELS, store, dirs_exist_ok=True)
        print(f"reference store: starting from a copy of {PREBUILT_MODELS}")
    result = run_save_models()
    REFERENCE_BUILD_LOG.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr
    return os.environ["BENTOML_HOME"]


def fresh_interpreter_json(code: str, home: Path | str) -> Any:
    """Run `code` in a fresh interpreter on BentoML home `home` (nothing this process has
    imported leaks in); it prints a JSON value last, returned here."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def private_home(reference_store: str, folder: Path) -> str:
    """A BentoML home of its own holding a copy of the session's models: one server per home
    (despliegue/home_lock.py)."""
    home = folder / "bentoml"
    shutil.copytree(Path(reference_store) / "models", home / "models")
    return str(home)


def runner_apart_config(folder: Path, family: str) -> Path:
    """configuration.yaml with `family`'s runner a process of its own (`placement`), as an
    operator writes it to serve that runner as a tier of its own (deploy/k8s/split)."""
    import yaml

    settings = yaml.safe_load((ROOT / "configuration.yaml").read_text(encoding="utf-8"))
    settings["placement"] = {family: "runner"}
    path = folder / "configuration.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


# The network guard (tests/network_guard/sitecustomize.py), put on a server's PYTHONPATH: it
# logs and refuses any connection to another host, each attempt a line holding this marker.
NETWORK_GUARD = ROOT / "tests" / "network_guard"
OUTBOUND_MARKER = "OUTBOUND CONNECTION ATTEMPT"


def shipped_env(home: str, **extra: str) -> dict[str, str]:
    """The session's environment as a fresh shell would have it: no telemetry switch (so the
    product's own default is what runs), the network guard on PYTHONPATH, `home` as the store."""
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_DO_NOT_TRACK"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETWORK_GUARD), env.get("PYTHONPATH")]))
    return {**env, "BENTOML_HOME": home, LIFECYCLE_STATE_ENV: lifecycle_state(home), **extra}


def shipped_serve_command(port: int) -> list[str]:
    """How the image and the Kubernetes manifests start the service, on a loopback port."""
    return [sys.executable, "-m", "despliegue.serving", "--host", "127.0.0.1", "--port", str(port)]


def launch(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server command from the checkout in its own process group, logging to a file."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_with_workers(process: subprocess.Popen[bytes]) -> None:
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


def outbound_attempts(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if OUTBOUND_MARKER in line]


def scrape_only_token() -> tuple[str, str]:
    """A token that may read /metrics only, made as docs/operations.md says: (hash line, token)."""
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "despliegue.tokens",
            "new",
            "--id",
            "prometheus",
            "--allow",
            "metrics",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip(), made.stderr.strip().splitlines()[-1]


START_DEADLINE_S = 300


@dataclass
class StartedServer:
    """The session's server and what its probes answered from the moment it was launched."""

    server: LiveServer
    launched: float
    start_up: list  # tests.probing.ProbeAnswer, in order
    metrics_token: str


@pytest.fixture(scope="session")
def session_server(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartedServer]:
    """One real server shared by every integration test that can share it, started the way the
    image and the Kubernetes manifests start it (`python -m despliegue.serving`): auth on with
    the session's tokens (plus a scrape-only one, and the tokens file tests edit), the network
    guard on, probed like Kubernetes from the moment it is launched (tests/integration/
    test_probes.py reads those answers). When the session ends it must have logged no token
    and tried to reach no other host."""
    from tests.probing import is_ready, probe_until

    line, metrics_token = scrape_only_token()
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    env = shipped_env(
        reference_store,
        **{
            TOKENS_ENV: "\n".join([SESSION_TOKEN_LINES, line]),
            TOKENS_FILE_ENV: str(SESSION_TOKENS_FILE),
        },
    )
    command = shipped_serve_command(port)
    launched = time.monotonic()
    process = launch(command, env, log_path)
    url = f"http://127.0.0.1:{port}"
    server = LiveServer(url=url, log_path=log_path, process=process)
    try:
        start_up = probe_until(server, launched, is_ready, START_DEADLINE_S)
        wait_until_serving(url, process, log_path)
        yield StartedServer(server, launched, start_up, metrics_token)
    finally:
        stop_with_workers(process)
    log = log_path.read_text(errors="replace")
    leaked = [t[:12] + "…" for t in (*SESSION_TOKENS, metrics_token) if t in log]
    assert not leaked, f"token values in the server log {log_path}: {leaked}"
    assert outbound_attempts(log) == [], f"outbound connections tried, see {log_path}"


@pytest.fixture(scope="session")
def live_server(session_server: StartedServer) -> LiveServer:
    """The session's shared server (see `session_server`)."""
    return session_server.server
