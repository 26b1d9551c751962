"""Start-up helper shared by the example scripts (imports nothing heavy)."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_startup():
    """Hides C++ start-up lines of TensorFlow (they ignore TF_CPP_MIN_LOG_LEVEL)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
