"""The CRD learning-rate recipe: step decays at fixed fractions of training, optional warm-up."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

CRD_MILESTONES = (0.625, 0.75, 0.875)
"""Fractions of training at which the rate is cut: epochs 150, 180 and 210 of 240."""

_LOW_LR_PREFIXES = ("mobilenetv2", "mobile_half", "shufflenet", "shufflev")


def default_lr(model_name: str) -> float:
    """The CRD recipe's initial learning rate for a model.

    Args:
        model_name: a zoo name (``get_model``'s), aliases included.

    Returns:
        0.01 for MobileNetV2 and the ShuffleNets, 0.05 otherwise.
    """
    return 0.01 if model_name.lower().startswith(_LOW_LR_PREFIXES) else 0.05


def milestone_epochs(epochs: int, milestones: Sequence[float] = CRD_MILESTONES) -> list[int]:
    """Epochs (0-based) from which each decay applies.

    Args:
        epochs: total number of epochs.
        milestones: fractions of ``epochs`` in (0, 1), or absolute epochs (values >= 1).

    Returns:
        The decay epochs, e.g. ``[150, 180, 210]`` for 240 epochs.
    """
    return [int(m) if m >= 1 else int(math.floor(m * epochs + 0.5)) for m in milestones]


@keras.saving.register_keras_serializable(package="keras_kdcap")
class CRDSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant rate decayed by ``gamma`` at each boundary step, after a linear warm-up.

    ``lr(step) = base_lr * gamma ** #{b in boundaries: step >= b} * min(1, (step + 1) / warmup)``
    (the warm-up factor only when ``warmup_steps > 0``). ``step`` counts optimizer updates
    from 0, so boundary ``epoch * steps_per_epoch`` is the first update of that epoch, as
    PyTorch's ``MultiStepLR`` stepped once per epoch.

    Args:
        base_lr: initial learning rate.
        boundaries: update steps at which the rate is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_steps: length of the linear warm-up (0: none).
        name: name of the schedule.
    """

    def __init__(
        self,
        base_lr: float,
        boundaries: Sequence[int],
        gamma: float = 0.1,
        warmup_steps: int = 0,
        name: str = "crd_schedule",
    ) -> None:
        super().__init__()
        self.base_lr = float(base_lr)
        self.boundaries = [int(b) for b in boundaries]
        self.gamma = float(gamma)
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decays = ops.zeros((), "float32")
        for boundary in self.boundaries:
            decays = decays + ops.cast(ops.greater_equal(step, float(boundary)), "float32")
        lr = self.base_lr * ops.power(ops.convert_to_tensor(self.gamma, "float32"), decays)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "boundaries": list(self.boundaries),
            "gamma": self.gamma,
            "warmup_steps": self.warmup_steps,
            "name": self.name,
        }


def crd_schedule(
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = CRD_MILESTONES,
    gamma: float = 0.1,
    warmup_epochs: float = 0,
) -> CRDSchedule:
    """The CRD step schedule: x0.1 at 62.5, 75 and 87.5% of the epochs (150/180/210 of 240).

    Args:
        base_lr: initial learning rate (see :func:`default_lr`).
        epochs: total number of epochs.
        steps_per_epoch: optimizer updates per epoch.
        milestones: fractions of ``epochs`` (or absolute epochs, values >= 1).
        gamma: decay factor at each milestone.
        warmup_epochs: length of a linear warm-up from ``base_lr / warmup_steps``.

    Returns:
        A serialisable :class:`CRDSchedule` for ``keras.optimizers.SGD(learning_rate=...)``.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs, steps_per_epoch must be >= 1, got {epochs}, {steps_per_epoch}")
    boundaries = [e * steps_per_epoch for e in milestone_epochs(epochs, milestones)]
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return CRDSchedule(base_lr, boundaries, gamma=gamma, warmup_steps=warmup_steps)
