"""Distillation loss (KD term) and the teacher-training losses (RegT, label smoothing)."""

from __future__ import annotations

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
        """Per-sample RegT loss.

        Args:
            y_true: sparse labels `[B]`/`[B, 1]` or one-hot `[B, C]`.
            y_pred: `[B, C]` logits.

        Returns:
            float32 `[B]` losses.
        """
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
        """Per-sample loss.

        Args:
            y_true: sparse labels `[B]`/`[B, 1]` or one-hot `[B, C]`.
            y_pred: `[B, C]` logits.

        Returns:
            float32 `[B]` losses.
        """
        _, _, log_probs, target = _cross_entropy_parts(y_true, y_pred)
        uniform = -ops.mean(log_probs, axis=-1)
        return (1.0 - self.label_smoothing) * target + self.label_smoothing * uniform

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(label_smoothing=self.label_smoothing)
        return config


#: stands in for -inf where the target class is masked out of a softmax.
_MASKED = -1e30


def decoupled_kl(teacher_logits, student_logits, labels, temperature):
    """DKD's two parts of the KL at temperature `T`, per sample, without `T^2`.

    TCKD is the KL between the binary distributions `[p_t, 1 - p_t]` of the
    teacher and the student at `T`; NCKD the KL between their distributions
    over the non-target classes, renormalised (Zhao et al., CVPR 2022). Both
    are computed from logits (the target's log-odds and a log-softmax over
    the non-target classes), so a confident teacher gives no `log(0)`.

    Args:
        teacher_logits: `[B, C]` teacher logits.
        student_logits: `[B, C]` student logits.
        labels: int `[B]` labels.
        temperature: `T`, scalar or `[B]`.

    Returns:
        `(tckd, nckd)`, two float32 `[B]` tensors.
    """
    num_classes = student_logits.shape[-1]
    mask = kd_ops.target_mask(labels, num_classes, dtype="bool")
    temperature = kd_ops.as_float32(temperature)
    if len(temperature.shape) == 1:
        temperature = ops.expand_dims(temperature, -1)
    log_odds, log_rest = [], []
    for logits in (teacher_logits, student_logits):
        scaled = kd_ops.as_float32(logits) / temperature
        masked = ops.where(mask, _MASKED, scaled)
        # log(p_t / (1 - p_t)) = f_y / T - logsumexp_{c != y}(f_c / T)
        target = ops.sum(ops.where(mask, scaled, 0.0), axis=-1)
        log_odds.append(target - ops.logsumexp(masked, axis=-1))
        log_rest.append(ops.log_softmax(masked, axis=-1))
    teacher_odds, student_odds = log_odds
    # KL(Bernoulli(sigmoid(a)) || Bernoulli(sigmoid(b))) = sp(b) - sp(a) + sigmoid(a) (a - b):
    # no log(1 - p_t), and far less cancellation than summing the two terms.
    tckd = (
        ops.softplus(student_odds)
        - ops.softplus(teacher_odds)
        + ops.sigmoid(teacher_odds) * (teacher_odds - student_odds)
    )
    teacher_rest, student_rest = log_rest
    nckd = ops.sum(
        ops.where(mask, 0.0, ops.exp(teacher_rest) * (teacher_rest - student_rest)), axis=-1
    )
    return tckd, nckd


def dkd_loss(
    teacher_logits,
    student_logits,
    labels,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
):
    """Decoupled KD per sample: `T^2 * (alpha * TCKD + beta * NCKD)`, in float32.

    The loss of each sample before batch averaging (mdistiller averages it
    over the batch). Defaults are mdistiller's CIFAR-100 settings.

    Args:
        teacher_logits: `[B, C]` teacher logits.
        student_logits: `[B, C]` student logits.
        labels: `[B]`, `[B, 1]` or one-hot `[B, C]` labels.
        alpha: weight of TCKD, >= 0.
        beta: weight of NCKD, >= 0.
        temperature: `T`, > 0 (a number, or a `[B]` tensor of them).

    Returns:
        float32 `[B]` losses.

    Example:
        >>> loss = dkd_loss(keras.ops.ones((2, 5)), keras.ops.zeros((2, 5)), [0, 3])
    """
    alpha = check_non_negative("alpha", alpha)
    beta = check_non_negative("beta", beta)
    if isinstance(temperature, (int, float)):
        temperature = check_positive("temperature", temperature)
    teacher_logits = kd_ops.as_float32(teacher_logits)
    student_logits = kd_ops.as_float32(student_logits)
    labels = kd_ops.sparse_labels(labels, student_logits.shape[-1])
    tckd, nckd = decoupled_kl(teacher_logits, student_logits, labels, temperature)
    temperature = kd_ops.as_float32(temperature)
    return temperature * temperature * (alpha * tckd + beta * nckd)
