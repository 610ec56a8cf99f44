"""What a person reads while models are built and the server starts: no TensorFlow banners, no
BentoML warning repeated for every upper-case model name (despliegue/quiet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PREBUILT_MODELS_LOG, REFERENCE_BUILD_LOG, LiveServer

pytestmark = pytest.mark.integration

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "to lowercase")


def test_building_the_reference_models_prints_no_tensorflow_banner(reference_store: str) -> None:
    # The session's save_models.py run, and the `make models` build it started from, if any.
    logs = [REFERENCE_BUILD_LOG, *([Path(PREBUILT_MODELS_LOG)] if PREBUILT_MODELS_LOG else [])]
    for log in logs:
        printed = log.read_text()
        assert "flower_classifier" in printed, log  # the outcome table: the build was logged
        assert not [line for line in printed.splitlines() if any(n in line for n in NOISE)], log


def test_server_log_has_no_start_up_noise(live_server: LiveServer) -> None:
    log = live_server.log()
    assert not [line for line in log.splitlines() if any(n in line for n in NOISE)]
