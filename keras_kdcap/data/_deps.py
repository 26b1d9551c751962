"""Lazy imports of TensorFlow and tensorflow-datasets for the tf.data pipelines."""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType

_INSTALL_HINT = "pip install keras-kdcap[tensorflow]"


@functools.cache
def import_tensorflow() -> ModuleType:
    """Import TensorFlow, the engine of every keras_kdcap.data pipeline.

    When Keras runs on JAX or torch, TensorFlow only feeds data: its GPUs are
    hidden from it so that it does not reserve accelerator memory the model needs.

    Returns:
        The ``tensorflow`` module.

    Raises:
        ImportError: TensorFlow is not installed; the message says how to install it.
    """
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            "keras_kdcap.data builds tf.data pipelines and needs TensorFlow, which is "
            f"an optional dependency. Install it with: {_INSTALL_HINT}"
        ) from err
    import keras

    if keras.backend.backend() != "tensorflow":
        # RuntimeError: GPUs already initialised by someone else; leave them.
        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], "GPU")
    return tf


@functools.cache
def import_tfds() -> ModuleType:
    """Import tensorflow-datasets.

    Returns:
        The ``tensorflow_datasets`` module.

    Raises:
        ImportError: tensorflow-datasets is not installed; the message says how to install it.
    """
    import_tensorflow()
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "This loader uses tensorflow-datasets, an optional dependency. "
            f"Install it with: {_INSTALL_HINT}"
        ) from err
    return tfds
