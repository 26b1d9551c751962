"""A simulated interruption at the end of an epoch, and the state a resume must restore."""

from __future__ import annotations

import keras
import numpy as np
from helpers import to_numpy


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


def training_state(distiller) -> dict[str, np.ndarray]:
    """Every variable that training changes or reads: weights, optimizer, policy."""
    groups = {
        "student": distiller.student.weights,
        "optimizer": distiller.optimizer.variables,
        "policy": distiller.policy.weights,
    }
    return {
        f"{group}/{i}": to_numpy(v)
        for group, variables in groups.items()
        for i, v in enumerate(variables)
    }
