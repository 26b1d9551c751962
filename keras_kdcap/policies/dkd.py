"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.fixed import tempered_target
from keras_kdcap.policies.schedule import ScheduledPolicy
from keras_kdcap.validation import (
    check_int_at_least,
    check_non_negative,
    check_positive,
    renamed_argument,
)

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


@keras.saving.register_keras_serializable(package="keras_kdcap")
class DKD(ScheduledPolicy):
    """KD split into target (TCKD) and non-target (NCKD) parts, weighted apart.

    `KD = w(e) * T^2 * (tckd_weight * TCKD + nckd_weight * NCKD)` per sample
    (mdistiller's alpha and beta), with the warm-up
    `w(e) = min((e + 1) / warmup_epochs, 1)` for the 0-based Keras epoch `e`
    (mdistiller's `min(epoch / warmup, 1)` with its 1-based epochs). The
    epoch lives in a non-trainable variable that `Distiller.fit` advances
    (`on_epoch_begin`); outside `fit`, call `set_epoch`. Defaults are
    mdistiller's CIFAR-100 ones; reproduce them with
    `Distiller.compile(alpha=1.0, beta=1.0, policy=DKD())`.
    docs/policies/dkd.md has the formulas.

    The target class is the label, the arg-max of a soft label row (MixUp,
    CutMix), or without labels (`alpha=0`) the teacher's top class.

    Args:
        tckd_weight: weight of TCKD, >= 0 (formerly `alpha`).
        nckd_weight: weight of NCKD, >= 0 (formerly `beta`).
        temperature: `T`, > 0, for teacher and student.
        warmup_epochs: epochs over which the DKD weight grows linearly to 1;
            0 disables the warm-up.
        name: layer name.

    Example:
        >>> policy = DKD(tckd_weight=1.0, nckd_weight=8.0, temperature=4.0)
    """

    registry_name = "dkd"

    metric_names = ("tckd", "nckd", "dkd_warmup")

    def __init__(
        self,
        tckd_weight: float = 1.0,
        nckd_weight: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        name: str | None = None,
        **kwargs,
    ):
        tckd_weight = renamed_argument(kwargs, "alpha", "tckd_weight", tckd_weight, 1.0, "DKD")
        nckd_weight = renamed_argument(kwargs, "beta", "nckd_weight", nckd_weight, 8.0, "DKD")
        super().__init__(name=name, **kwargs)
        self.tckd_weight = check_non_negative("tckd_weight", tckd_weight)
        self.nckd_weight = check_non_negative("nckd_weight", nckd_weight)
        self.temperature = check_positive("temperature", temperature)
        self.warmup_epochs = check_int_at_least("warmup_epochs", warmup_epochs, 0)

    def warmup_factor(self):
        """`min((epoch + 1) / warmup_epochs, 1)`, a float32 scalar tensor."""
        if self.warmup_epochs == 0:
            return ops.convert_to_tensor(1.0, dtype="float32")
        return ops.minimum((ops.convert_to_tensor(self.epoch) + 1.0) / self.warmup_epochs, 1.0)

    def compute_target(self, teacher_logits, labels):
        """`softmax(f / T)` and `T`; the statistics need the student (see `kd_loss`)."""
        return tempered_target(teacher_logits, self.temperature)

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        tckd, nckd = decoupled_kl(teacher_logits, student_logits, labels, self.temperature)
        factor = self.warmup_factor()
        loss = factor * (self.tckd_weight * tckd + self.nckd_weight * nckd)
        if temperature_scaling:
            loss = loss * (self.temperature * self.temperature)
        probs = kd_ops.tempered_softmax(teacher_logits, self.temperature)
        stats = {"tckd": tckd, "nckd": nckd, "dkd_warmup": ops.ones_like(tckd) * factor}
        return loss, probs, stats
