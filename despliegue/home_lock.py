"""One server per BENTOML_HOME.

BentoML keeps its Prometheus multiprocess files in `$BENTOML_HOME/prometheus_multiproc_dir` and
empties that folder whenever a server starts: a second server on the same home wipes the first
one's files, and the first then serves stale `/metrics`. So the process that starts a server
takes an exclusive lock on `$BENTOML_HOME/despliegue-serve.lock` when it loads the service
(before BentoML touches that folder) and holds it until it exits; a second server on the same
home stops there, naming the first. Give each server its own BENTOML_HOME (with a copy of the
`models` folder).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

LOCK_FILE = "despliegue-serve.lock"
# The open lock file of this process: closing it (at exit) releases the lock.
_held: int | None = None


class HomeInUse(SystemExit):
    """Another server holds this BENTOML_HOME."""


def starts_a_server(argv: list[str]) -> bool:
    """True in the process that starts a server (`bentoml serve`, `python -m despliegue.serving`),
    False in its workers and anywhere else the service is imported (build, tests)."""
    if not argv:
        return False
    program = Path(argv[0])
    return (program.name == "bentoml" and argv[1:2] == ["serve"]) or program.parts[-2:] == (
        "despliegue",
        "serving.py",
    )


def claim_home(home: str) -> None:
    """Lock `home` for this process's lifetime, or exit saying who holds it."""
    global _held
    if _held is not None:
        return
    Path(home).mkdir(parents=True, exist_ok=True)
    path = Path(home) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise HomeInUse(
            f"BENTOML_HOME={home} is already used by a running server ({holder}). Two servers "
            "on one home wipe each other's Prometheus metrics: give this one its own "
            "BENTOML_HOME (with a copy of its models folder)."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}".encode())
    _held = fd
