"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.losses import decoupled_kl
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import check_int_at_least, check_non_negative, check_positive


@keras.saving.register_keras_serializable(package="keras_kdcap")
class DKD(TemperaturePolicy):
    """KD split into target (TCKD) and non-target (NCKD) parts, weighted apart.

    `KD = w(e) * T^2 * (alpha * TCKD + beta * NCKD)` per sample, with the
    warm-up `w(e) = min((e + 1) / warmup_epochs, 1)` for the 0-based Keras
    epoch `e` (mdistiller's `min(epoch / warmup, 1)` with its 1-based epochs).
    The epoch lives in a non-trainable variable: add
    `keras_kdcap.baselines.callbacks.PolicyEpochCallback()` to `fit` (or call
    `set_epoch`), otherwise the warm-up stays at its first value.
    Defaults are mdistiller's CIFAR-100 ones; reproduce them with
    `Distiller.compile(alpha=1.0, beta=1.0, policy=DKD())`.
    docs/policies/dkd.md has the formulas.

    Args:
        alpha: weight of TCKD, >= 0.
        beta: weight of NCKD, >= 0.
        temperature: `T`, > 0, for teacher and student.
        warmup_epochs: epochs over which the DKD weight grows linearly to 1;
            0 disables the warm-up.
        name: layer name.

    Example:
        >>> policy = DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    """

    metric_names = ("tckd", "nckd", "dkd_warmup")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.warmup_epochs = check_int_at_least("warmup_epochs", warmup_epochs, 0)
        self.epoch = self.add_weight(
            name="epoch", shape=(), initializer="zeros", trainable=False, dtype="float32"
        )

    def set_epoch(self, epoch: int) -> None:
        """Sets the 0-based training epoch the warm-up is computed from."""
        self.epoch.assign(float(check_int_at_least("epoch", epoch, 0)))

    def warmup_factor(self):
        """`min((epoch + 1) / warmup_epochs, 1)`, a float32 scalar tensor."""
        if self.warmup_epochs == 0:
            return ops.convert_to_tensor(1.0, dtype="float32")
        return ops.minimum((ops.convert_to_tensor(self.epoch) + 1.0) / self.warmup_epochs, 1.0)

    def compute_target(self, teacher_logits, labels):
        """`softmax(f / T)` and `T`; the statistics need the student (see `kd_loss`)."""
        probs = kd_ops.tempered_softmax(teacher_logits, self.temperature)
        return probs, ops.full((ops.shape(teacher_logits)[0],), self.temperature), {}

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        tckd, nckd = decoupled_kl(teacher_logits, student_logits, labels, self.temperature)
        factor = self.warmup_factor()
        loss = factor * (self.alpha * tckd + self.beta * nckd)
        if temperature_scaling:
            loss = loss * (self.temperature * self.temperature)
        probs = kd_ops.tempered_softmax(teacher_logits, self.temperature)
        stats = {"tckd": tckd, "nckd": nckd, "dkd_warmup": ops.ones_like(tckd) * factor}
        return loss, probs, stats

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            warmup_epochs=self.warmup_epochs,
        )
        return config
