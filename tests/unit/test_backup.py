"""save_models.py backup / restore through the real command line and real model stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_save_models


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store with the reference models, and a backup of it."""
    root = tmp_path_factory.mktemp("backup")
    home, folder = root / "home", root / "backup"
    assert run_save_models(home=str(home)).returncode == 0
    result = run_save_models("backup", str(folder), home=str(home))
    assert result.returncode == 0, result.stderr
    return home, folder


def model_dirs(home: Path) -> set[str]:
    models = home / "models"
    return {f"{p.parent.name}:{p.name}" for p in models.glob("*/*") if p.name != "latest"}


def test_backup_lists_every_served_model_with_its_sha256(backed_up: tuple[Path, Path]) -> None:
    home, folder = backed_up
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {entry["tag"] for entry in manifest["models"]} == model_dirs(home)
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
    assert again.returncode == 0 and "kept" in again.stderr


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
