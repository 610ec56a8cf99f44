"""Back up the model store to a folder, and restore it only from an intact backup.

    python save_models.py backup DIR     export every stored model + manifest.json (sha256)
    python save_models.py restore DIR    verify everything first, then import what is missing

Every model in the store goes into a backup, not only the served ones: canary, shadow and
rollback candidates and older imports are what a user imported too, and `bentoml build` packs
some of them. A backup is refused while a served model is missing from the store.

A backup folder holds one `<name>-<version>.bentomodel` archive per model (BentoML's own
export format, metadata included) and `manifest.json` listing each file with its sha256 and
size. Restore checks everything before it imports anything: every file's size and sum, and
then that each archive imports (into a throw-away store) and holds the tag the manifest
names. Only then are the missing models imported; if one of those imports fails, the ones
imported before it are deleted again. The error names the file, and says whether the store
is unchanged.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bentoml

from despliegue import bentoml_compat
from despliegue.artifacts import sha256_of
from despliegue.lifecycle.plans import served_tags

MANIFEST = "manifest.json"
FORMAT = "despliegue-model-backup/1"


class BackupRefused(Exception):
    """The backup cannot be used; the message names the file and the reason.

    `left_in_store` lists models a failed restore imported and could not delete again (empty:
    the store is as it was)."""

    def __init__(self, message: str, left_in_store: list[str] | None = None) -> None:
        super().__init__(message)
        self.left_in_store = left_in_store or []


@dataclass(frozen=True)
class BackedUp:
    tag: str
    file: str
    action: str  # "exported", "restored", "kept"


def stored_models() -> list[bentoml.Model]:
    """Every model in the store, by tag; refused if a configured family's model is missing."""
    for name, tag in served_tags().items():
        try:
            bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            raise BackupRefused(
                f"family {name}: model {tag} is not in the store; nothing to back up"
            ) from None
    return sorted(bentoml.models.list(), key=lambda model: str(model.tag))


def backup(folder: Path) -> list[BackedUp]:
    """Export every stored model into `folder` (created; must not hold a backup already)."""
    if (folder / MANIFEST).exists():
        raise BackupRefused(f"{folder / MANIFEST}: a backup is already there; use a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    entries, done = [], []
    for model in stored_models():
        file_name = f"{model.tag.name}-{model.tag.version}.bentomodel"
        bentoml.models.export_model(str(model.tag), str(folder / file_name))
        path = folder / file_name
        entries.append(
            {
                "tag": str(model.tag),
                "file": file_name,
                "sha256": sha256_of(path),
                "bytes": path.stat().st_size,
            }
        )
        done.append(BackedUp(str(model.tag), file_name, "exported"))
    manifest = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": entries,
    }
    # The manifest is written last: a backup interrupted before it is not a backup.
    partial = folder / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    partial.replace(folder / MANIFEST)
    return done


def verify(folder: Path) -> list[dict[str, object]]:
    """The manifest's entries, after checking every listed file's size and sha256."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BackupRefused(f"{manifest_path}: cannot be read ({exc.strerror})") from None
    except ValueError:
        raise BackupRefused(f"{manifest_path}: not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRefused(f"{manifest_path}: not a {FORMAT} manifest")
    entries = manifest.get("models")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        raise BackupRefused(f"{manifest_path}: lists no models")
    tags = [str(entry.get("tag")) for entry in entries]
    if len(set(tags)) != len(tags):
        raise BackupRefused(f"{manifest_path}: lists a model more than once")
    for entry in entries:
        name = Path(str(entry.get("file", "")))
        if name.name != str(name) or not name.name.endswith(".bentomodel"):
            raise BackupRefused(f"{manifest_path}: bad file name {str(name)!r}")
        path = folder / name
        if not path.is_file():
            raise BackupRefused(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            raise BackupRefused(f"{path}: sha256 does not match the manifest (damaged backup)")
    return entries


def check_archive(path: Path, tag: str) -> None:
    """Import an archive into a throw-away store: it must import and hold `tag`."""
    with tempfile.TemporaryDirectory(prefix="despliegue-restore-check-") as scratch:
        try:
            model = bentoml.models.import_model(
                str(path), _model_store=bentoml_compat.model_store(scratch)
            )
        except Exception as exc:  # BentoML raises many types for broken archives
            raise BackupRefused(f"{path}: not an importable model archive ({exc})") from None
        if str(model.tag) != tag:
            raise BackupRefused(f"{path}: holds {model.tag}, the manifest says {tag}")


def restore(folder: Path) -> list[BackedUp]:
    """Verify the whole backup, then import every model the store does not hold yet."""
    entries = verify(folder)
    done, missing = [], []
    for entry in entries:
        tag, file_name = str(entry["tag"]), str(entry["file"])
        try:
            bentoml.models.get(tag)
            done.append(BackedUp(tag, file_name, "kept"))
        except bentoml.exceptions.NotFound:
            missing.append((tag, folder / file_name))
    for tag, path in missing:
        check_archive(path, tag)
    imported: list[str] = []
    for tag, path in missing:
        try:
            bentoml.models.import_model(str(path))
        except Exception as exc:
            left = roll_back(imported)  # the models this restore imported before this one
            raise BackupRefused(f"{path}: import failed ({exc})", left_in_store=left) from exc
        imported.append(tag)
        done.append(BackedUp(tag, path.name, "restored"))
    return done


def roll_back(imported: list[str]) -> list[str]:
    """Delete the models a failed restore imported; the tags that could not be deleted."""
    left = []
    for tag in reversed(imported):
        try:
            bentoml.models.delete(tag)
        except Exception:
            left.append(tag)
    return left
