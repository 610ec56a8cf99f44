"""save_models.py backup / restore through the real command line and real model stores."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, private_home, run_save_models

pytestmark = pytest.mark.processes


# A model the user saved into the store and does not serve (yet): a candidate of their own.
SAVE_AN_UNSERVED_MODEL = """
import bentoml
from sklearn.linear_model import LinearRegression

bentoml.sklearn.save_model("heatflow_candidate", LinearRegression().fit([[0.0], [1.0]], [0, 1]))
"""


@pytest.fixture(scope="module")
def backed_up(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the session's reference store plus one unserved model, and a backup of it."""
    root = tmp_path_factory.mktemp("backup")
    home, folder = Path(private_home(reference_store, root)), root / "backup"
    saved = subprocess.run(
        [sys.executable, "-c", SAVE_AN_UNSERVED_MODEL],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert saved.returncode == 0, saved.stderr
    result = run_save_models("backup", str(folder), home=str(home))
    assert result.returncode == 0, result.stderr
    return home, folder


def model_dirs(home: Path) -> set[str]:
    models = home / "models"
    return {f"{p.parent.name}:{p.name}" for p in models.glob("*/*") if p.name != "latest"}


def test_backup_lists_every_stored_model_with_its_sha256(backed_up: tuple[Path, Path]) -> None:
    """Served or not: an unserved import restored from nothing would be lost silently."""
    home, folder = backed_up
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {entry["tag"] for entry in manifest["models"]} == model_dirs(home)
    assert any(entry["tag"].startswith("heatflow_candidate:") for entry in manifest["models"])
    for entry in manifest["models"]:
        assert len(entry["sha256"]) == 64 and (folder / entry["file"]).stat().st_size > 0


def test_restore_into_an_empty_store_brings_every_model_back(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    home, folder = backed_up
    fresh = tmp_path / "fresh"
    result = run_save_models("restore", str(folder), home=str(fresh))
    assert result.returncode == 0, result.stderr
    assert model_dirs(fresh) == model_dirs(home)
    again = run_save_models("restore", str(folder), home=str(fresh))
    assert again.returncode == 0 and "kept" in again.stdout


def test_a_damaged_backup_is_refused_naming_the_file(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    _, folder = backed_up
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["models"]:
        (damaged / entry["file"]).write_bytes((folder / entry["file"]).read_bytes())
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    victim = damaged / manifest["models"][-1]["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    fresh = tmp_path / "fresh"
    result = run_save_models("restore", str(damaged), home=str(fresh))
    assert result.returncode == 1
    flat = " ".join(result.stderr.split())
    assert victim.name in flat and "sha256 does not match" in flat
    assert "store is unchanged" in flat
    assert not (fresh / "models").exists() or model_dirs(fresh) == set()


def test_backup_will_not_overwrite_a_backup(backed_up: tuple[Path, Path]) -> None:
    home, folder = backed_up
    result = run_save_models("backup", str(folder), home=str(home))
    assert result.returncode == 1 and "already there" in " ".join(result.stderr.split())


def copy_backup(folder: Path, target: Path) -> dict:
    """A copy of a backup to tamper with; its manifest."""
    target.mkdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["models"]:
        (target / entry["file"]).write_bytes((folder / entry["file"]).read_bytes())
    return manifest


def rewrite(target: Path, manifest: dict, index: int, content: bytes) -> Path:
    """Put `content` in entry `index`'s file and record its sum: the sums all match."""
    entry = manifest["models"][index]
    path = target / entry["file"]
    path.write_bytes(content)
    entry.update(sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))
    (target / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_an_archive_holding_another_model_is_refused_before_any_import(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    """A tag mismatch was found only when importing: earlier models (and the wrong one) were
    in the store, and the command said the store was unchanged."""
    _, folder = backed_up
    tampered = tmp_path / "tampered"
    manifest = copy_backup(folder, tampered)
    assert len(manifest["models"]) >= 3
    stranger = rewrite(tampered, manifest, 2, (folder / manifest["models"][0]["file"]).read_bytes())
    fresh = tmp_path / "fresh"
    result = run_save_models("restore", str(tampered), home=str(fresh))
    assert result.returncode == 1
    flat = " ".join(result.stderr.split())
    assert stranger.name in flat and f"the manifest says {manifest['models'][2]['tag']}" in flat
    assert "store is unchanged" in flat
    assert model_dirs(fresh) == set()


def test_an_archive_that_does_not_import_is_refused_before_any_import(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    _, folder = backed_up
    tampered = tmp_path / "tampered"
    manifest = copy_backup(folder, tampered)
    broken = rewrite(tampered, manifest, 2, b"not an archive at all" * 100)
    fresh = tmp_path / "fresh"
    result = run_save_models("restore", str(tampered), home=str(fresh))
    assert result.returncode == 1
    flat = " ".join(result.stderr.split())
    assert broken.name in flat and "not an importable model archive" in flat
    assert "store is unchanged" in flat
    assert model_dirs(fresh) == set()


# The real restore command, with the store's third import made to fail (say, a full disk).
FAILING_THIRD_IMPORT = """
import sys
import bentoml
import save_models

real_import = bentoml.models.import_model
calls = []

def import_model(path, *args, **kwargs):
    if "_model_store" not in kwargs:  # imports into the real store, not the checks
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
    return real_import(path, *args, **kwargs)

bentoml.models.import_model = import_model
sys.exit(save_models.main(["restore", sys.argv[1]]))
"""


def test_an_import_that_fails_half_way_is_rolled_back(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    home, folder = backed_up
    fresh = tmp_path / "fresh"
    result = subprocess.run(
        [sys.executable, "-c", FAILING_THIRD_IMPORT, str(folder)],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(fresh), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr
    flat = " ".join(result.stderr.split())
    assert "No space left on device" in flat and "store is unchanged" in flat
    assert model_dirs(fresh) == set()
    again = run_save_models("restore", str(folder), home=str(fresh))
    assert again.returncode == 0 and model_dirs(fresh) == model_dirs(home)
