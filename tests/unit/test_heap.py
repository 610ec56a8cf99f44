"""The start-up heap is frozen, the collector thresholds raised and the heap released, each in a
fresh interpreter (the test process's own collector and allocator are left alone)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT


def run_fresh(script: str) -> Any:
    """Run `script` in a new interpreter at the project root; its printed JSON, parsed."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.processes
def test_settle_worker_heap_freezes_what_exists_and_raises_thresholds() -> None:
    script = (
        "import gc, json\n"
        "from despliegue.heap import THRESHOLDS, settle_worker_heap\n"
        "before = gc.get_freeze_count()\n"
        "settle_worker_heap()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(), THRESHOLDS]))\n"
    )
    before, after, thresholds, wanted = run_fresh(script)
    assert before == 0
    assert after > 1000  # the interpreter's and the imports' objects are now permanent
    assert thresholds == wanted and thresholds[0] > 700


def test_malloc_arenas_are_limited_on_glibc() -> None:
    """mallopt(M_ARENA_MAX) is accepted (this machine, like the image, runs glibc)."""
    from despliegue.heap import limit_malloc_arenas

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()}): nothing to limit")
    assert limit_malloc_arenas() is True


@pytest.mark.processes
def test_release_heap_gives_back_what_a_cancelled_request_left_in_a_cycle() -> None:
    """A 256 MiB buffer held by a reference cycle (as a cancelled request's frames hold its
    images) stays resident under the raised thresholds until release_heap() runs."""
    script = (
        "import gc, json, os\n"
        "from despliegue.heap import THRESHOLDS, release_heap\n"
        "gc.set_threshold(*THRESHOLDS)\n"
        "def rss():\n"
        "    return int(open(f'/proc/{os.getpid()}/statm').read().split()[1]) * 4096 / 2**20\n"
        "start = rss()\n"
        "held = [bytearray(256 * 2**20)]\n"
        "held.append(held)  # a cycle: reference counting alone never frees it\n"
        "del held\n"
        "before = rss()\n"
        "trimmed = release_heap()\n"
        "print(json.dumps([start, before, rss(), trimmed]))\n"
    )
    start, before, after, trimmed = run_fresh(script)
    assert before - start > 200  # the cycle still holds the buffer
    assert before - after > 200  # and the release gave it back
    assert trimmed is (platform.libc_ver()[0] == "glibc")
