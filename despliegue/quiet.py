"""Start-up noise a person should not have to read, silenced in one place.

- TensorFlow 2.21 prints "oneDNN custom operations are on..." twice per process, each time
  after absl's "All log messages before absl::InitializeLog() ..." line, from C++ straight to
  file descriptor 2 while it is imported: `TF_CPP_MIN_LOG_LEVEL` does not reach those lines, and
  they break through `save_models.py`'s progress line. `import_tensorflow()` imports it with
  descriptor 2 captured and writes back every line except those banners (an import error still
  shows in full). `TF_CPP_MIN_LOG_LEVEL=0` shows everything again.
- BentoML warns "Converting 'modelo_AMK_NM' to lowercase" every time a tag with a capital is
  built: about twenty times per start with the reference antibiotic panel. Store names are
  case-insensitive by design (the panel's model pattern keeps the seed's spelling), so
  `quiet_bentoml_tag_warnings()` drops that one message.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

TENSORFLOW_BANNERS = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I0000 \S+\s+\d+ (port|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions: .*rebuild TensorFlow)"
)


@contextmanager
def stderr_without(banner: re.Pattern[str]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly), then write back every line that
    does not match `banner`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not banner.match(line)
            ]
            sys.stderr.write("".join(kept))


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, without its start-up banners unless TF_CPP_MIN_LOG_LEVEL=0."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import tensorflow
    else:
        with stderr_without(TENSORFLOW_BANNERS):
            import tensorflow
    return tensorflow


class _LowercaseTagWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "to lowercase" not in str(record.msg)


def quiet_bentoml_tag_warnings() -> None:
    """Drop BentoML's "Converting ... to lowercase" warning (idempotent)."""
    from despliegue.bentoml_compat import TAG_LOGGER

    logger = logging.getLogger(TAG_LOGGER)
    if not any(isinstance(f, _LowercaseTagWarning) for f in logger.filters):
        logger.addFilter(_LowercaseTagWarning())
