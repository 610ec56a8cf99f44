"""`bentoml serve` stops before serving, naming the problem and the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from despliegue.artifacts import sha256_of
from despliegue.config import DEFAULT_CONFIG_PATH
from tests.conftest import LIFECYCLE_STATE_ENV, start_server, stop_server


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


def test_a_state_naming_a_tag_its_store_lacks_stops_the_service(
    reference_store: str, tmp_path: Path
) -> None:
    """The state beside a home (its default place) names a tag that home never stored, as one
    promoted in another home would: refused at start-up, naming the tag and the store."""
    home = copy_of_store(reference_store, tmp_path)
    missing = "heatflow_svr:fromanotherhome"
    state = {"families": {"heatflow": {"served": missing}}}
    (home / "served.json").write_text(json.dumps(state))
    # Empty: no override, the state is found where it lives by default.
    extra_env = {LIFECYCLE_STATE_ENV: ""}
    code, log = serve_until_exit(str(home), tmp_path / "serve.log", extra_env)
    assert code != 0
    assert f"model(s) {missing} not in the BentoML model store ({home})" in log, log[-3000:]


# --- models verified at load, and start-up failures that stop the server at once ------------


def copy_of_store(reference_store: str, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(Path(reference_store) / "models", home / "models")
    return home


def stored_file(home: Path, model: str, name: str) -> Path:
    (found,) = (home / "models" / model).glob(f"*/{name}")
    return found


def flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def assert_one_clear_line(log: str, *words: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    for word in words:
        assert word in log, f"{word!r} not in:\n{log[-3000:]}"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("model", "file"),
    [
        ("heatflow_svr", "model.joblib"),
        ("flower_classifier", "model.keras"),
        ("face_detector", "pnet.lz4"),
    ],
)
def test_a_model_file_with_flipped_bytes_stops_start_up_naming_it(
    reference_store: str, tmp_path: Path, model: str, file: str
) -> None:
    """64 flipped bytes in the heat-flow model were served (200 with a negative heat flow)."""
    home = copy_of_store(reference_store, tmp_path)
    damaged = stored_file(home, model, file)
    flip_bytes(damaged)
    code, log = serve_until_exit(str(home), tmp_path / "serve.log", {})
    assert code == 1
    assert_one_clear_line(log, str(damaged), "sha256", "damaged", "save_models.py")


@pytest.mark.integration
def test_an_unreadable_model_file_stops_start_up_naming_it(
    reference_store: str, tmp_path: Path
) -> None:
    home = copy_of_store(reference_store, tmp_path)
    artifact = stored_file(home, "falsetrue_classifier", "model.joblib")
    artifact.unlink()
    artifact.mkdir()  # a folder where the file should be: unreadable as a file, even for root
    code, log = serve_until_exit(str(home), tmp_path / "serve.log", {})
    assert code == 1
    assert_one_clear_line(log, str(artifact), "cannot be read", "read access")


@pytest.mark.integration
def test_an_unreadable_model_folder_stops_start_up_naming_it(
    reference_store: str, tmp_path: Path
) -> None:
    home = copy_of_store(reference_store, tmp_path)
    (folder,) = (p for p in (home / "models" / "heatflow_svr").iterdir() if p.is_dir())
    (folder / "model.yaml").write_text("{ this is not: [ yaml", encoding="utf-8")
    code, log = serve_until_exit(str(home), tmp_path / "serve.log", {})
    assert code == 1
    assert_one_clear_line(log, "heatflow_svr", "cannot be read", "models")


@pytest.mark.integration
def test_a_missing_tls_certificate_stops_start_up_naming_it(
    reference_store: str, tmp_path: Path
) -> None:
    home = copy_of_store(reference_store, tmp_path)
    missing = tmp_path / "no-such-cert.pem"
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    raw["bentoml"]["services"]["Despliegue"]["ssl"] = {
        "enabled": True,
        "certfile": str(missing),
        "keyfile": str(tmp_path / "no-such-key.pem"),
    }
    config = tmp_path / "configuration.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, log = serve_until_exit(
        str(home), tmp_path / "serve.log", {"DESPLIEGUE_CONFIG": str(config)}
    )
    assert code == 1
    assert_one_clear_line(log, str(missing), "no such file", "ssl.certfile")


@pytest.mark.integration
def test_a_verified_model_the_runner_cannot_load_stops_the_whole_server(
    reference_store: str, tmp_path: Path
) -> None:
    """A file whose sha256 matches its record but that Keras cannot load (what a library
    upgrade can do): the runner used to crash-loop forever while /models hung."""
    home = copy_of_store(reference_store, tmp_path)
    artifact = stored_file(home, "flower_classifier", "model.keras")
    artifact.write_bytes(b"PK\x03\x04 not really a zip archive")
    info_file = artifact.parent / "model.yaml"
    info = yaml.safe_load(info_file.read_text(encoding="utf-8"))
    info["metadata"]["artifact_sha256"] = sha256_of(artifact)
    info_file.write_text(yaml.safe_dump(info), encoding="utf-8")
    # Served by TensorFlow (a model without a checked compiled form, or compiled serving off):
    # the runner loads the .keras itself.
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    raw["tensorflow"]["compiled"] = False
    config = tmp_path / "configuration.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, log = serve_until_exit(
        str(home), tmp_path / "serve.log", {"DESPLIEGUE_CONFIG": str(config)}
    )
    assert code == 1
    assert_one_clear_line(log, "cannot start", str(artifact), "keras loader", "save_models.py")
    assert log.count("cannot start: model flower_classifier") == 1  # not restarted over and over
