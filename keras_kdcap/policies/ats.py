"""ATS: asymmetric temperature scaling (Li et al., NeurIPS 2022)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import check_positive


@keras.saving.register_keras_serializable(package="keras_kdcap")
class ATS(TemperaturePolicy):
    """One softmax with `tau1` on the target class and `tau2` on the others.

    Defaults are the official code's: `tau1=4`, `tau2=2`, student at
    temperature 1 (pair with `alpha=beta=0.5` and `temperature_scaling=False`
    in `Distiller.compile` to reproduce it exactly).

    The target class is the label, the arg-max of a soft label row (MixUp,
    CutMix), or without labels (`alpha=0`) the teacher's top class.

    Args:
        target_temperature: `tau1`, > 0.
        other_temperature: `tau2`, > 0.
        student_temperature: `s`, > 0.
        keep_target_first: cap `tau1` per sample so the label stays ranked
            first (METHODS.md); off by default, as in the paper.
        name: layer name.
    """

    registry_name = "ats"

    metric_names = ("target_cap_rate",)

    def __init__(
        self,
        target_temperature: float = 4.0,
        other_temperature: float = 2.0,
        student_temperature: float = 1.0,
        keep_target_first: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.target_temperature = check_positive("target_temperature", target_temperature)
        self.other_temperature = check_positive("other_temperature", other_temperature)
        self.student_temperature = check_positive("student_temperature", student_temperature)
        self.keep_target_first = bool(keep_target_first)

    def compute_target(self, teacher_logits, labels):
        batch = ops.shape(teacher_logits)[0]
        tau1 = ops.full((batch,), self.target_temperature)
        tau2 = ops.full((batch,), self.other_temperature)
        capped = ops.zeros((batch,))
        if self.keep_target_first:
            tau1, capped = kd_ops.keep_target_first(teacher_logits, labels, tau1, tau2)
        probs = kd_ops.asymmetric_softmax(teacher_logits, labels, tau1, tau2)
        student_temperature = ops.full((batch,), self.student_temperature)
        return probs, student_temperature, {"target_cap_rate": capped}
