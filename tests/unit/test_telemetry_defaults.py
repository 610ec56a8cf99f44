"""BentoML's usage telemetry is off wherever the service is started from, and can be turned on.

The started servers themselves are checked in tests/integration/test_probes.py (`make serve`,
`python -m despliegue.serving`) and tests/container (the image); these are the settings.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

SWITCH = "BENTOML_DO_NOT_TRACK"


def recipe_environment(value: str | None) -> str:
    """BENTOML_DO_NOT_TRACK as every Makefile recipe sees it, from a shell that sets `value`."""
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    if value is not None:
        env[SWITCH] = value
    extra_target = "show-telemetry:\n\t@echo $$BENTOML_DO_NOT_TRACK\n"
    shown = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "show-telemetry"],
        cwd=ROOT,
        env=env,
        input=extra_target,
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout.strip()


@pytest.mark.processes
@pytest.mark.parametrize(("shell", "recipes"), [(None, "true"), ("false", "false")])
def test_makefile_recipes_run_with_telemetry_off_unless_asked(
    shell: str | None, recipes: str
) -> None:
    assert recipe_environment(shell) == recipes


def test_the_image_environment_turns_telemetry_off() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text(encoding="utf-8"))
    assert bentofile["docker"]["env"][SWITCH] == "true"
