"""The client-only venvs (`make client-venv`, `make v2-client-venv`), as the client tests use
them: found or skipped (failed on CI) naming the make target, and code run in one from a
folder outside the repository, against a live server with its token."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, LiveServer


def client_venv_python(env_var: str, default: str, make_target: str) -> Path:
    """The venv's python: `$env_var`, else ROOT/`default`; skipped, or failed on CI, if absent."""
    python = Path(os.environ.get(env_var, ROOT / default)) / "bin/python"
    if not python.exists():
        reason = f"no client venv at {python.parent.parent}: run `make {make_target}`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def run_in_client_venv(python: Path, server: LiveServer, workdir: Path, code: str) -> str:
    """Run `code` (dedented) with the venv's python in `workdir`, the server's address and
    token in DESPLIEGUE_URL and TOKEN, nothing of this project's environment; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        {"DESPLIEGUE_URL": server.url, "TOKEN": server.token, "BENTOML_DO_NOT_TRACK": "true"}
    )
    result = subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout
