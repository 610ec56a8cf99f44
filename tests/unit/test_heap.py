"""The start-up heap is frozen and the collector thresholds raised, in a fresh interpreter
(the test process's own collector is left alone)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_freeze_startup_heap_freezes_what_exists_and_raises_thresholds() -> None:
    script = (
        "import gc, json\n"
        "from despliegue.heap import THRESHOLDS, freeze_startup_heap\n"
        "before = gc.get_freeze_count()\n"
        "freeze_startup_heap()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(), THRESHOLDS]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    before, after, thresholds, wanted = json.loads(done.stdout)
    assert before == 0
    assert after > 1000  # the interpreter's and the imports' objects are now permanent
    assert thresholds == wanted and thresholds[0] > 700


def test_malloc_arenas_are_limited_on_glibc() -> None:
    """mallopt(M_ARENA_MAX) is accepted (this machine, like the image, runs glibc)."""
    import platform

    import pytest

    from despliegue.heap import limit_malloc_arenas

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()}): nothing to limit")
    assert limit_malloc_arenas() is True
