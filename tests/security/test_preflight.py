"""`bentoml serve` stops before serving, naming the problem and the fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import start_server, stop_server


def serve_until_exit(home: str, log_path: Path, extra_env: dict[str, str]) -> tuple[int, str]:
    process = start_server(home, log_path, extra_env)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop_server(process)
        pytest.fail(f"server kept running:\n{log_path.read_text()[-3000:]}")
    return code, log_path.read_text()


def test_auth_on_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    # Tokens are checked first, so an empty store will do. (Never point a second server at the
    # live server's home: `bentoml serve` wipes the metrics folder there at start.)
    home = str(tmp_path / "home")
    code, log = serve_until_exit(home, tmp_path / "serve.log", {"DESPLIEGUE_TOKENS": ""})
    assert code != 0
    assert "security.auth is enabled but no tokens are configured" in log
    assert "python -m despliegue.tokens new" in log and "DESPLIEGUE_AUTH=off" in log
    assert "not in the BentoML model store" not in log


def test_a_model_missing_from_the_store_stops_the_service(tmp_path: Path) -> None:
    empty_home = tmp_path / "empty-home"
    code, log = serve_until_exit(str(empty_home), tmp_path / "serve.log", {})
    assert code != 0
    assert "heatflow_svr:latest" in log and "falsetrue_classifier:latest" in log
    assert "python save_models.py" in log
