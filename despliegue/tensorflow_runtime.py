"""TensorFlow set-up for every process that runs a CNN (runners and reference training).

Thread pools can only be sized before TensorFlow runs its first op, so each runner calls
`configure_tensorflow()` first thing in `__init__`. The sizes come from configuration.yaml
(`tensorflow:`), documented there.
"""

from __future__ import annotations

import os
from typing import Any

from despliegue.config import settings


def configure_tensorflow() -> Any:
    """Import TensorFlow with the configured thread pools and return the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = settings().tensorflow
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads.inter_op_threads)
    except RuntimeError:
        pass  # already initialised in this process (e.g. a second model in one runner)
    return tf
