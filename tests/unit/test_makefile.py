"""The Makefile as a person reads it: `make help` lists every target, with values filled in."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.processes


def test_help_lists_every_documented_target_with_values() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    documented = re.findall(r"^([A-Za-z0-9_.-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    listed = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert listed == documented
    assert {"k8s-config", "serve", "test", "client-venv"} <= set(listed)
    assert "$(" not in result.stdout, result.stdout
    assert "localhost:3000" in result.stdout


def test_bentoml_build_finds_the_pinned_uv_and_installs_nothing(monkeypatch) -> None:
    """`bentoml build` locks packages with uv and pip-installs it from the network if missing."""
    from bentoml._internal import configuration

    pinned = re.search(r"^uv==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert pinned and importlib.metadata.version("uv") == pinned.group(1)

    def no_install(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"bentoml tried to install uv: {args}")

    monkeypatch.setattr(subprocess, "run", no_install)
    assert configuration.get_uv_command()
