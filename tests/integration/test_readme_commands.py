"""The README's commands as a newcomer runs them: `make serve`, then every curl example.

`make serve` runs as written (auth off, on its own BENTOML_HOME holding a copy of the session's
models, on a free port); its start-up log must say what a person needs and nothing over and
over. Then each README shell block that calls curl runs with bash in a folder holding a real
`photo.jpg` larger than one shell argument may be (the old `-d "$IMG"` form failed there),
with only the port changed; every answer must be JSON without an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, free_port, private_home
from tests.image_samples import encode, photo

pytestmark = pytest.mark.integration

PHOTO_MIN_BYTES = 200 * 1024
TENSORFLOW_BANNERS = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")


def readme_shell_blocks() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [block for block in blocks if "curl " in block]


@pytest.fixture(scope="module")
def make_serve(reference_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if not shutil.which("curl"):
        message = "curl missing: scripts/test-tools.sh installs it (root, apt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("make-serve")
    home = private_home(reference_store, folder)
    port = free_port()
    log_path = folder / "make-serve.log"
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["make", "serve", f"PORT={port}"],
            cwd=ROOT,
            env={**env, "BENTOML_HOME": home},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield {"url": url, "port": port, "log": log_path}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_make_serve_start_says_what_a_person_needs_once(make_serve: dict) -> None:
    log = make_serve["log"].read_text(errors="replace")
    assert f"http://127.0.0.1:{make_serve['port']}" in log
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
def test_readme_curl_commands_answer(make_serve: dict, tmp_path: Path, block: str) -> None:
    # skimage's astronaut at twice its size: a real photo of about 300 KB.
    picture = encode(
        np.asarray(Image.fromarray(photo("astronaut")).resize((1024, 1024))), "JPEG", quality=95
    )
    assert len(picture) > PHOTO_MIN_BYTES, len(picture)
    (tmp_path / "photo.jpg").write_bytes(picture)
    script = block.replace("localhost:3000", f"127.0.0.1:{make_serve['port']}")
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
