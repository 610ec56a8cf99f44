"""The README's commands as a newcomer runs them: `make serve`, then every curl example.

`make serve` runs as written (auth off, on its own BENTOML_HOME holding a copy of the session's
models, on a free port, without the telemetry switch and with the network guard on), probed like
Kubernetes from its launch: every probe answer truthful, one "ready" line, no outbound
connection; its start-up log must say what a person needs and nothing over and over. Then each
README shell block that calls curl runs with bash in a folder holding a real `photo.jpg` larger
than one shell argument may be (the old `-d "$IMG"` form failed there), with only the port
changed; every answer must be JSON without an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    ROOT,
    START_DEADLINE_S,
    LiveServer,
    free_port,
    launch,
    outbound_attempts,
    private_home,
    shipped_env,
    stop_with_workers,
    wait_until_serving,
)
from tests.image_samples import encode, photo
from tests.probing import ProbeAnswer, assert_truthful, is_ready, probe_until

pytestmark = pytest.mark.integration

PHOTO_MIN_BYTES = 200 * 1024
TENSORFLOW_BANNERS = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")


def readme_shell_blocks() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [block for block in blocks if "curl " in block]


@dataclass
class MakeServe:
    server: LiveServer
    port: int
    log: Path
    start_up: list[ProbeAnswer]  # every probe answer from launch until ready


@pytest.fixture(scope="module")
def make_serve(
    reference_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeServe]:
    """`make serve` as the README says, from a shell without BENTOML_DO_NOT_TRACK and with the
    network guard on (tests/conftest.py: `shipped_env`), probed like Kubernetes from launch."""
    if not shutil.which("curl"):
        message = "curl missing: scripts/test-tools.sh installs it (root, apt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("make-serve")
    port = free_port()
    log_path = folder / "make-serve.log"
    env = shipped_env(private_home(reference_store, folder))
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    launched = time.monotonic()
    process = launch(["make", "serve", f"PORT={port}"], env, log_path)
    server = LiveServer(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process)
    try:
        start_up = probe_until(server, launched, is_ready, START_DEADLINE_S)
        wait_until_serving(server.url, process, log_path)
        yield MakeServe(server=server, port=port, log=log_path, start_up=start_up)
    finally:
        stop_with_workers(process)


def test_make_serve_probes_truthfully_with_telemetry_off(make_serve: MakeServe) -> None:
    assert_truthful(make_serve.start_up)
    (line,) = make_serve.server.log_lines_with("ready: serving")
    assert line.endswith(f"at {make_serve.server.url}, auth off"), line
    assert outbound_attempts(make_serve.server.log()) == []


def test_make_serve_start_says_what_a_person_needs_once(make_serve: MakeServe) -> None:
    log = make_serve.log.read_text(errors="replace")
    assert f"http://127.0.0.1:{make_serve.port}" in log
    assert "AUTH DISABLED" in log
    for banner in TENSORFLOW_BANNERS:
        assert banner not in log, banner
    # Ignore the time stamp and the process tag: the same warning from every process is noise.
    warnings = Counter(
        re.sub(r"^\S+ \[WARNING\] \[[^\]]*\] ", "", line)
        for line in log.splitlines()
        if "[WARNING]" in line
    )
    repeated = {text: count for text, count in warnings.items() if count > 1}
    assert not repeated, repeated
    assert "to lowercase" not in log


@pytest.mark.parametrize("block", readme_shell_blocks(), ids=lambda b: b.split()[2][:30])
def test_readme_curl_commands_answer(make_serve: MakeServe, tmp_path: Path, block: str) -> None:
    # skimage's astronaut at twice its size: a real photo of about 300 KB.
    picture = encode(
        np.asarray(Image.fromarray(photo("astronaut")).resize((1024, 1024))), "JPEG", quality=95
    )
    assert len(picture) > PHOTO_MIN_BYTES, len(picture)
    (tmp_path / "photo.jpg").write_bytes(picture)
    script = block.replace("localhost:3000", f"127.0.0.1:{make_serve.port}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answers, rest, decoder = [], result.stdout.strip(), json.JSONDecoder()
    while rest:
        answer, end = decoder.raw_decode(rest)
        answers.append(answer)
        rest = rest[end:].strip()
    calls = len(re.findall(r"\bcurl ", block))
    assert len(answers) == calls, result.stdout[:2000]
    for answer in answers:
        assert "error" not in answer, answer
