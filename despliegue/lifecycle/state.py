"""The lifecycle state file: what each family serves, as operators chose it, and its history.

One small JSON file (`lifecycle.state_file`, `served.json` in the project folder by default, so
`bentoml build` and the image carry it; DESPLIEGUE_LIFECYCLE_STATE overrides it):

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
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from despliegue.config import PROJECT_ROOT, Canary, settings

STATE_ENV = "DESPLIEGUE_LIFECYCLE_STATE"


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


def state_path() -> Path:
    configured = Path(os.environ.get(STATE_ENV) or settings().lifecycle.state_file)
    return configured if configured.is_absolute() else PROJECT_ROOT / configured


def history_path() -> Path:
    state = state_path()
    return state.with_name(f"{state.stem}-history.jsonl")


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
