"""How the service starts and stops: fail fast with one line, drain on SIGTERM.

`bentoml serve` runs an arbiter process that starts one worker process per service (the API,
then one per runner) and restarts any worker that exits. Left alone, that turns a model that
cannot load into a worker restarting forever while `/models` hangs, and a graceful stop into
lost requests, since every worker gets SIGTERM at once. Here:

- `preflight(checks)` runs in the arbiter before any worker starts (the API service's
  `on_deployment` hook): tokens, every served model (in the store, readable, sha256 as
  recorded), TLS files. The first failure stops `bentoml serve` with exit status 1 and one line
  naming the file and the fix, not a traceback.
- `stop_server_on_failure()` guards a runner's model loading: a failure the preflight cannot
  see (a file it verified that the installed library still cannot load) is logged as one line,
  and the worker stops the arbiter, so the whole server exits (status 1) instead of looping.
- `serve_until_callers_stop()` makes a runner that receives SIGTERM keep answering until the
  API workers of the same server have exited: they are finishing their in-flight requests,
  which still call the runner. Then it stops as usual. So a graceful stop loses no request that
  the server had accepted.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

logger = logging.getLogger("despliegue.startup")

# Set by the preflight in the arbiter, inherited by every worker it starts (BentoML's watchers
# copy the arbiter's environment): the API service's name, and where a worker that could not
# start writes why, so the arbiter exits with a failure status.
ENTRY_SERVICE_ENV = "DESPLIEGUE_ENTRY_SERVICE"
FAILURE_FILE_ENV = "DESPLIEGUE_STARTUP_FAILURE_FILE"

# The longest a runner keeps serving after SIGTERM while API workers are still draining.
CALLER_DRAIN_LIMIT_S = 120.0


class StartupFailure(RuntimeError):
    """Something the service needs is missing or unusable; the message names it and the fix."""


def preflight(entry_service: str, checks: Iterable[Callable[[], None]]) -> None:
    """Run the start-up checks in the arbiter; stop `bentoml serve` (exit 1) with one line on
    the first failure. Also prepares what the workers need to fail fast and to drain."""
    from despliegue.artifacts import ModelMissing, ModelUnusable
    from despliegue.config import ConfigurationError

    try:
        for check in checks:
            check()
    except (StartupFailure, ModelMissing, ModelUnusable, ConfigurationError) as exc:
        raise SystemExit(f"Despliegue cannot start: {exc}") from None
    os.environ[ENTRY_SERVICE_ENV] = entry_service
    failure_file = Path(tempfile.mkdtemp(prefix="despliegue-startup-")) / "failure"
    os.environ[FAILURE_FILE_ENV] = str(failure_file)
    atexit.register(_exit_failed_if_a_worker_could_not_start, failure_file)


def _exit_failed_if_a_worker_could_not_start(failure_file: Path) -> None:
    reason = None
    if failure_file.exists():
        reason = failure_file.read_text(encoding="utf-8", errors="replace").strip()
    shutil.rmtree(failure_file.parent, ignore_errors=True)
    if reason is not None:
        sys.stderr.write(f"Despliegue stopped: {reason}\n")
        sys.stderr.flush()
        os._exit(1)


def check_tls_files() -> None:
    """The certificate and key BentoML will serve HTTPS with load, or StartupFailure naming the
    file (BentoML would otherwise restart the API worker forever on a missing file)."""
    from despliegue.bentoml_compat import container

    tls = container().ssl
    certfile, keyfile = tls.certfile.get(), tls.keyfile.get()
    if not tls.enabled.get() and not certfile:
        return
    fix = (
        "Fix: point bentoml.services.Despliegue.ssl.certfile and keyfile in configuration.yaml "
        "at readable PEM files (see docs/security.md), or set ssl.enabled: false."
    )
    if not certfile:
        raise StartupFailure(f"TLS is enabled but no certificate file is configured. {fix}")
    for role, file in (("certificate", certfile), ("key", keyfile), ("CA", tls.ca_certs.get())):
        if file and not os.access(file, os.R_OK):
            reason = "no such file" if not os.path.exists(file) else "not readable"
            raise StartupFailure(f"TLS {role} file {file}: {reason}. {fix}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile or None, tls.keyfile_password.get() or None)
    except (ssl.SSLError, OSError) as exc:
        raise StartupFailure(
            f"TLS certificate {certfile} / key {keyfile}: cannot be loaded ({exc}). {fix}"
        ) from None


def in_worker() -> bool:
    """True in a `bentoml serve` worker process (not in a test or benchmark calling a runner
    class in-process)."""
    from despliegue.bentoml_compat import server_context

    return server_context().service_name is not None


@contextlib.contextmanager
def stop_server_on_failure(what: str) -> Iterator[None]:
    """In a worker: a failure inside the block is logged as one line and stops the whole server
    (exit status 1); elsewhere the exception propagates as usual."""
    from despliegue.artifacts import ModelMissing, ModelUnusable

    try:
        yield
    except Exception as exc:
        if not in_worker():
            raise
        known = isinstance(exc, StartupFailure | ModelMissing | ModelUnusable)
        reason = f"{what}: {exc}" if known else f"{what}: {type(exc).__name__}: {exc}"
        logger.error("cannot start: %s", reason)
        failure_file = os.environ.get(FAILURE_FILE_ENV)
        if failure_file:
            Path(failure_file).write_text(reason, encoding="utf-8")
        # The arbiter is this worker's parent: SIGTERM stops every worker and the server exits,
        # instead of restarting this one forever.
        os.kill(os.getppid(), signal.SIGTERM)
        logging.shutdown()
        os._exit(1)


def serve_until_callers_stop() -> None:
    """In a runner worker: on SIGTERM, keep serving until the API workers under the same
    arbiter have exited, then let the server stop (call once, from the service's __init__)."""
    from despliegue.bentoml_compat import server_context

    entry = os.environ.get(ENTRY_SERVICE_ENV)
    if not in_worker() or not entry or threading.current_thread() is not threading.main_thread():
        return
    if server_context().service_name == entry:  # a runner inside the API worker: it drains itself
        return
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        threading.Thread(
            target=_stop_after_callers,
            args=(entry, uvicorn_handler, signum, frame),
            name="drain-callers",
            daemon=True,
        ).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def _stop_after_callers(
    entry: str, stop: Callable[[int, FrameType | None], Any], signum: int, frame: Any
) -> None:
    deadline = time.monotonic() + CALLER_DRAIN_LIMIT_S
    while time.monotonic() < deadline and _callers_alive(entry):
        time.sleep(0.1)
    stop(signum, frame)


def _callers_alive(entry: str) -> bool:
    """Whether a worker of the entry service still runs beside this one."""
    try:
        siblings = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return False
    for sibling in siblings:
        try:
            command = sibling.cmdline()
            alive = sibling.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if alive and "--service-name" in command:
            name = command[command.index("--service-name") + 1]
            if name == entry:
                return True
    return False
