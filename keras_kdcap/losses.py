"""Distillation loss (KD term) and the teacher-training losses (RegT, label smoothing)."""

from __future__ import annotations

import warnings

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.validation import check_fraction, check_non_negative, check_positive

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


def _cross_entropy_parts(y_true, y_pred):
    """The pieces the teacher-training losses share.

    Args:
        y_true: sparse labels `[B]`/`[B, 1]` or one-hot `[B, C]`.
        y_pred: `[B, C]` logits.

    Returns:
        `(logits, labels, log_probs, ce)`: float32 logits, int `[B]` labels,
        the log-softmax and the per-sample cross-entropy `[B]`.
    """
    logits = kd_ops.as_float32(y_pred)
    num_classes = logits.shape[-1]
    labels = kd_ops.sparse_labels(y_true, num_classes)
    log_probs = ops.log_softmax(logits, axis=-1)
    ce = -ops.sum(log_probs * kd_ops.target_mask(labels, num_classes), axis=-1)
    return logits, labels, log_probs, ce


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
        """Float32 `[B]` RegT losses from sparse or one-hot labels and `[B, C]` logits."""
        logits, labels, _, ce = _cross_entropy_parts(y_true, y_pred)
        num_classes = logits.shape[-1]
        probs = kd_ops.tempered_softmax(logits, self.temperature)
        variance = kd_ops.non_target_variance(probs, labels)
        return ce - self.gamma * (num_classes - 1) * variance

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(gamma=self.gamma, temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="keras_kdcap")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy against label-smoothed targets, from logits and int labels.

    `L = -(1 - eps) * log p_y - eps / C * sum_k log p_k` (the target
    `(1 - eps) * onehot(y) + eps / C`, as in Keras's one-hot
    `CategoricalCrossentropy(label_smoothing=eps)`, which takes no int
    labels). It trains *flat* teachers: the smoothing pushes the non-target
    probabilities towards equal (METHODS.md, RegT), so it is the opposite of
    RegT and serves to produce teachers with flat non-target entries for
    experiments.

    Args:
        label_smoothing: `eps` in [0, 1] (0 gives plain cross-entropy).
        name: loss name.
    """

    def __init__(self, label_smoothing: float = 0.1, name: str = "smoothed_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = check_fraction("label_smoothing", label_smoothing)

    def call(self, y_true, y_pred):
        """Float32 `[B]` losses from sparse or one-hot labels and `[B, C]` logits."""
        _, _, log_probs, target = _cross_entropy_parts(y_true, y_pred)
        uniform = -ops.mean(log_probs, axis=-1)
        return (1.0 - self.label_smoothing) * target + self.label_smoothing * uniform

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(label_smoothing=self.label_smoothing)
        return config


def dkd_loss(
    teacher_logits,
    student_logits,
    labels,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
):
    """Deprecated: `DKD(tckd_weight, nckd_weight, temperature, warmup_epochs=0).kd_loss`.

    DKD's formula lives in `keras_kdcap.policies.dkd` only; this wrapper goes
    in the next release.

    Args:
        teacher_logits: `[B, C]` teacher logits.
        student_logits: `[B, C]` student logits.
        labels: `[B]`, `[B, 1]` or one-hot `[B, C]` labels.
        alpha: weight of TCKD (`DKD`'s `tckd_weight`), >= 0.
        beta: weight of NCKD (`DKD`'s `nckd_weight`), >= 0.
        temperature: `T`, > 0.

    Returns:
        float32 `[B]` losses `T^2 * (alpha * TCKD + beta * NCKD)`.
    """
    from keras_kdcap.policies.dkd import DKD

    warnings.warn(
        "keras_kdcap.losses.dkd_loss is deprecated: use "
        "DKD(tckd_weight, nckd_weight, temperature, warmup_epochs=0).kd_loss(...); "
        "it goes in the next release.",
        DeprecationWarning,
        stacklevel=2,
    )
    policy = DKD(tckd_weight=alpha, nckd_weight=beta, temperature=temperature, warmup_epochs=0)
    student_logits = kd_ops.as_float32(student_logits)
    labels = kd_ops.sparse_labels(labels, student_logits.shape[-1])
    loss, _, _ = policy.kd_loss(kd_ops.as_float32(teacher_logits), student_logits, labels)
    return loss


def __getattr__(name: str):
    """`decoupled_kl` moved to `keras_kdcap.policies.dkd` (deprecated alias)."""
    if name == "decoupled_kl":
        from keras_kdcap.policies import dkd

        warnings.warn(
            "keras_kdcap.losses.decoupled_kl moved to keras_kdcap.policies.dkd.decoupled_kl; "
            "the old path goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return dkd.decoupled_kl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
