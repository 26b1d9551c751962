"""Policies whose KD term follows the training epoch (DKD's warm-up, CTKD's curriculum)."""

from __future__ import annotations

from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import check_int_at_least


class ScheduledPolicy(TemperaturePolicy):
    """A policy that reads the 0-based training epoch from its `epoch` variable.

    The variable is non-trainable, so it is saved with the model, restored by
    `BackupAndRestore` and seen anew by the compiled step on every backend.
    `Distiller.fit` advances it (`on_epoch_begin`); outside `fit`, call
    `set_epoch`.
    """

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.epoch = self.add_weight(
            name="epoch", shape=(), initializer="zeros", trainable=False, dtype="float32"
        )

    def set_epoch(self, epoch: int) -> None:
        """Sets the 0-based training epoch the schedule is computed from."""
        self.epoch.assign(float(check_int_at_least("epoch", epoch, 0)))

    def on_epoch_begin(self, epoch: int) -> None:
        self.set_epoch(epoch)
