"""Distillation loss (KD term) and the RegT teacher-training loss."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.validation import check_non_negative, check_positive

_TINY = 1e-30


def distillation_loss(
    teacher_probs, student_logits, student_temperature, temperature_scaling: bool = True
):
    """Per-sample `s^2 * KL(t || softmax(g / s))`, in float32.

    Uses the student's log-softmax (no log of a softmax) and `t log t = 0`
    where `t = 0`, so zero teacher probabilities give no NaN.

    Args:
        teacher_probs: `[B, C]` teacher target distribution `t`.
        student_logits: `[B, C]` student logits `g`.
        student_temperature: `s`, scalar or `[B]`.
        temperature_scaling: multiply by `s^2` (Hinton et al. 2015); set
            False for the ATS code's convention (no factor).

    Returns:
        float32 `[B]` loss per sample.
    """
    teacher_probs = kd_ops.as_float32(teacher_probs)
    log_student = kd_ops.tempered_log_softmax(student_logits, student_temperature)
    log_teacher = ops.log(ops.maximum(teacher_probs, _TINY))
    kl = ops.sum(teacher_probs * (log_teacher - log_student), axis=-1)
    if temperature_scaling:
        temperature = kd_ops.as_float32(student_temperature)
        kl = kl * temperature * temperature
    return kl


@keras.saving.register_keras_serializable(package="keras_kdcap")
class RegTLoss(keras.losses.Loss):
    """RegT: cross-entropy minus a reward for distinct non-target probabilities.

    `L_T = CE(y, softmax(f)) - gamma * (C - 1) * v(q(x; tau_r))`, the
    project's definition (METHODS.md, RegT), for `teacher.compile(loss=...)`.

    Args:
        gamma: weight of the variance reward, >= 0 (0 gives plain CE).
        temperature: `tau_r`, the temperature the variance is measured at.
        name: loss name.

    Example:
        >>> teacher.compile(optimizer="sgd", loss=RegTLoss(gamma=0.1))  # doctest: +SKIP
    """

    def __init__(
        self,
        gamma: float = 0.1,
        temperature: float = 4.0,
        name: str = "regt_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.gamma = check_non_negative("gamma", gamma)
        self.temperature = check_positive("temperature", temperature)

    def call(self, y_true, y_pred):
        """Per-sample RegT loss.

        Args:
            y_true: sparse labels `[B]`/`[B, 1]` or one-hot `[B, C]`.
            y_pred: `[B, C]` logits.

        Returns:
            float32 `[B]` losses.
        """
        logits = kd_ops.as_float32(y_pred)
        num_classes = logits.shape[-1]
        labels = kd_ops.sparse_labels(y_true, num_classes)
        log_probs = ops.log_softmax(logits, axis=-1)
        ce = -ops.sum(log_probs * kd_ops.target_mask(labels, num_classes), axis=-1)
        probs = kd_ops.tempered_softmax(logits, self.temperature)
        variance = kd_ops.non_target_variance(probs, labels)
        return ce - self.gamma * (num_classes - 1) * variance

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(gamma=self.gamma, temperature=self.temperature)
        return config
