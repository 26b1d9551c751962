"""Fixed temperature: Hinton et al.'s KD."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import check_positive


def tempered_target(teacher_logits, temperature: float):
    """Hinton's target: `softmax(f / T)`, the student at `T`, no statistics.

    Args:
        teacher_logits: `[B, C]` teacher logits.
        temperature: `T`, a number.

    Returns:
        `(probs, student_temperature, {})`, as `compute_target` returns them.
    """
    probs = kd_ops.tempered_softmax(teacher_logits, temperature)
    return probs, ops.full((ops.shape(teacher_logits)[0],), temperature), {}


@keras.saving.register_keras_serializable(package="keras_kdcap")
class FixedTemperature(TemperaturePolicy):
    """`t = softmax(f / T)`, student at the same `T` (Hinton et al. 2015).

    Args:
        temperature: `T`, > 0. Default 4 (the CRD benchmark setting).
        name: layer name.

    Example:
        >>> probs, s = FixedTemperature(4.0)(keras.ops.ones((2, 10)))
    """

    registry_name = "kd"

    requires_labels = False

    def __init__(self, temperature: float = 4.0, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature)

    def compute_target(self, teacher_logits, labels):
        return tempered_target(teacher_logits, self.temperature)
