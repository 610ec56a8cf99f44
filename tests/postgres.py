"""A throw-away PostgreSQL server for tests: Debian's binaries (installed by
scripts/postgresql.sh), a temporary data folder, trust auth on 127.0.0.1, run as an
unprivileged user (the package's `postgres` user when the tests run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "mlflow"
DATABASE = "mlflow"


def binaries() -> tuple[Path | None, str]:
    """The folder holding initdb and postgres, or None and why it cannot be used."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        return None, "no PostgreSQL server here (/usr/lib/postgresql/*/bin/initdb); " + (
            "scripts/postgresql.sh installs it (root + apt-get)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and no unprivileged `postgres` user to run the server"
    return Path(found[-1]).parent, ""


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """Start PostgreSQL on 127.0.0.1:port; yield a SQLAlchemy URL of an empty database."""
    import psycopg2

    bindir, reason = binaries()
    if bindir is None:
        raise RuntimeError(reason)
    run_as = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's tmp_path: its parents are private to root, the server user must enter.
    folder = Path(tempfile.mkdtemp(prefix="despliegue-postgres-"))
    if run_as:
        account = pwd.getpwnam(run_as)
        os.chown(folder, account.pw_uid, account.pw_gid)
    data = folder / "data"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"],
        user=run_as,
        check=True,
        capture_output=True,
    )
    log = (folder / "postgres.log").open("wb")
    server = subprocess.Popen(
        [
            str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
            "-c", "listen_addresses=127.0.0.1",
        ],
        user=run_as, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _create_database(psycopg2, port, server, folder)
        yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _create_database(psycopg2, port: int, server: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
            break
        except psycopg2.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                log = (folder / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
            time.sleep(0.2)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {DATABASE}")
    connection.close()
