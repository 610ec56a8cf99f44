"""The lifecycle state file: what each family serves, as operators chose it, and its history.

One small JSON file beside the model store whose tags it names: `$BENTOML_HOME/served.json` by
default, so one checkout used with two BentoML homes never mixes their states. Inside a built
Bento it is the Bento's own `src/served.json`, packed at build time (`pack_for_build`,
despliegue/lifecycle/pack.py), so the image serves what was promoted. A configured
`lifecycle.state_file` (relative: to the project folder) or DESPLIEGUE_LIFECYCLE_STATE (first)
overrides the default:

    {"families": {"heatflow": {"served": "heatflow_svr:v2", "previous": "heatflow_svr:v1",
                               "canary": {"tag": "heatflow_svr:v3", "percent": 20},
                               "shadow": "heatflow_svr:v4"}}}

It is replaced, never edited in place, one writer at a time; every change appends one audit
line (who, when, from -> to, why) to `<state>-history.jsonl` beside it. Read by the runners
(the hot swap), the API (GET /models) and the operator commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from despliegue.bentoml_compat import bentoml_home
from despliegue.config import PROJECT_ROOT, Canary, settings

STATE_ENV = "DESPLIEGUE_LIFECYCLE_STATE"
# The default name, in the BentoML home and in a Bento's src folder; bentofile.yaml includes it.
STATE_FILE = "served.json"


class FamilyState(BaseModel):
    """One family's entry. A key present (even null) overrides configuration.yaml."""

    served: str | None = None
    previous: str | None = None
    canary: Canary | None = None
    shadow: str | None = None


class State(BaseModel):
    families: dict[str, FamilyState] = Field(default_factory=dict)


class LifecycleRefused(Exception):
    """A promote / rollback / canary / shadow that cannot be done; the message says why."""


def bento_source() -> Path | None:
    """The `src` folder of the built Bento this code runs from, or None (a checkout). BentoML
    writes `bento.yaml` at a Bento's root, beside `src/`: in the image, in the local Bento store
    and in an exported Bento alike."""
    if PROJECT_ROOT.name == "src" and (PROJECT_ROOT.parent / "bento.yaml").is_file():
        return PROJECT_ROOT
    return None


def state_path() -> Path:
    configured = os.environ.get(STATE_ENV) or settings().lifecycle.state_file
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else PROJECT_ROOT / path
    # Never the checkout: its tags would be another home's as soon as BENTOML_HOME changes.
    return (bento_source() or Path(bentoml_home())) / STATE_FILE


def history_path(state: Path | None = None) -> Path:
    state = state or state_path()
    return state.with_name(f"{state.stem}-history.jsonl")


@contextlib.contextmanager
def pack_for_build(context: Path = PROJECT_ROOT) -> Iterator[list[Path]]:
    """Copy this home's state and its history into the build context (`served.json` and
    `served-history.jsonl`, which bentofile.yaml includes) while the block runs `bentoml build`,
    and remove the copies afterwards, also on failure. Yields the files copied (none: no
    promotion was recorded, the Bento serves what configuration.yaml names).

    A state already in the context that is not the one to pack is refused, not overwritten
    nor packed: it is a file the old default left in the checkout, or another home's."""
    state = state_path()
    pairs = [(state, context / STATE_FILE), (history_path(state), context / "served-history.jsonl")]
    copies = []
    for source, target in pairs:
        if source.resolve() == target.resolve():
            continue  # configured to live in the build context already: packed as it is
        if target.exists():
            raise LifecycleRefused(
                f"{target} is in the build context, but the state to pack is {state}. "
                f"{target.name} in the project folder is no longer read outside a Bento: if "
                f"it is this home's, move it to {source}; otherwise delete it. Then build again."
            )
        if source.exists():
            copies.append(target)
    try:
        for source, target in pairs:
            if target in copies:
                shutil.copyfile(source, target)
        yield copies
    finally:
        for target in copies:
            target.unlink(missing_ok=True)


def state_stamp() -> str:
    """Changes whenever the state file is rewritten (it is replaced, never edited in place)."""
    try:
        stat = state_path().stat()
    except FileNotFoundError:
        return "absent"
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


def read_state() -> State:
    path = state_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return State()
    return State.model_validate_json(text)


@contextlib.contextmanager
def changing_state() -> Iterator[State]:
    """Read, let the caller change, and atomically replace the state file, one writer at a
    time (a lock file beside it); readers never see a half-written file."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state()
        yield state
        temporary = path.with_name(f".{path.name}.tmp")
        # Only the keys an operator set: an absent key still defers to configuration.yaml.
        families = {
            family: entry.model_dump(mode="json", exclude_unset=True)
            for family, entry in sorted(state.families.items())
        }
        temporary.write_text(json.dumps({"families": families}, indent=2) + "\n")
        os.replace(temporary, path)


def operator() -> str:
    return os.environ.get("DESPLIEGUE_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def audit(family: str, action: str, before: str | None, after: str | None, why: str) -> dict:
    """Append one line to the history: who, when, what changed from what to what, and why."""
    line = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": operator(),
        "family": family,
        "action": action,
        "from": before,
        "to": after,
        "why": why,
    }
    with history_path().open("a", encoding="utf-8") as history:
        history.write(json.dumps(line) + "\n")
    return line


def history(family: str | None = None) -> list[dict]:
    try:
        lines = history_path().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = [json.loads(line) for line in lines if line.strip()]
    return [e for e in entries if family is None or e["family"] == family]
