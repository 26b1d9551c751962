"""A simulated interruption at the end of an epoch, for the resume tests."""

from __future__ import annotations

import keras


class PreemptedError(RuntimeError):
    """The simulated interruption."""


class PreemptAfterEpoch(keras.callbacks.Callback):
    """Raises `PreemptedError` at the end of `epoch`, after the callbacks before it
    (a backup callback placed first has written that epoch).

    Args:
        epoch: the 0-based epoch at whose end the run stops.
    """

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise PreemptedError(f"simulated preemption after epoch {epoch}")
