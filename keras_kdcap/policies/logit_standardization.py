"""Logit standardisation before the tempered softmax (Sun et al., CVPR 2024)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.losses import distillation_loss
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.sckd import SCKD
from keras_kdcap.policies.wrapper import WrapperPolicy
from keras_kdcap.validation import check_non_negative, check_positive

#: keeps the square root's gradient finite when every logit of a row is equal.
_MIN_VARIANCE = 1e-30


def standardize_logits(logits, ddof: int = 0, eps: float = 1e-7):
    """Z-scores each row: `(z - mean(z)) / (std(z) + eps)`, in float32.

    Args:
        logits: `[B, C]` logits.
        ddof: 0 for the population standard deviation (the paper's formula),
            1 for the sample one (`torch.std`, the official code).
        eps: added to the standard deviation, >= 0.

    Returns:
        float32 `[B, C]` standardised logits.
    """
    logits = kd_ops.as_float32(logits)
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.sum(centred * centred, axis=-1, keepdims=True) / (logits.shape[-1] - ddof)
    return centred / (ops.sqrt(ops.maximum(variance, _MIN_VARIANCE)) + eps)


@keras.saving.register_keras_serializable(package="keras_kdcap")
class LogitStandardization(WrapperPolicy):
    """KD on z-scored teacher and student logits, alone or around another policy.

    Without `base_policy`: `T^2 KL(softmax(z(f) / T) || softmax(z(g) / T))`,
    `z` the per-sample z-score. With one, the base policy's KD term on the
    standardised logits: `base.kd_loss(z(f), z(g), labels)` (for a
    target-based policy: its target computed from `z(f)`, the student's
    `z(g)` at the base's student temperature). The base then sets every
    temperature and `temperature` is unused. Where that composition makes
    sense is in docs/policies/logit_standardization.md.

    Args:
        base_policy: a policy to apply to the standardised logits, or None for
            plain KD at `temperature`. SCKD (whose gradient weighting is
            defined on the raw logits) and LogitStandardization itself are
            rejected.
        temperature: the base temperature `T` (paper default 2) when
            `base_policy` is None.
        ddof: 0 (population std, the paper's formula) or 1 (sample std,
            the official code's `torch.std`).
        eps: added to the standard deviation (official code: 1e-7).
        name: layer name.

    Example:
        >>> policy = LogitStandardization(temperature=2.0)
        >>> policy = LogitStandardization(ATS(target_temperature=1.5, other_temperature=1.0))
    """

    registry_name = "ls"

    def __init__(
        self,
        base_policy: TemperaturePolicy | None = None,
        temperature: float = 2.0,
        ddof: int = 0,
        eps: float = 1e-7,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.base_policy = self.check_base_policy(base_policy)
        if isinstance(base_policy, (LogitStandardization, SCKD)):
            raise ValueError(
                f"`base_policy` cannot be {type(base_policy).__name__}: "
                + (
                    "SCKD's weight is defined on the raw student logits."
                    if isinstance(base_policy, SCKD)
                    else "the logits are standardised already."
                )
            )
        self.temperature = check_positive("temperature", temperature)
        if ddof not in (0, 1) or isinstance(ddof, bool):
            raise ValueError(f"`ddof` must be 0 or 1; got {ddof!r}.")
        self.ddof = int(ddof)
        self.eps = check_non_negative("eps", eps)

    @property
    def requires_labels(self) -> bool:
        return self.base_policy is not None and self.base_policy.requires_labels

    def standardize(self, logits):
        """The z-scored logits, `[B, C]`."""
        return standardize_logits(logits, self.ddof, self.eps)

    def set_epoch(self, epoch: int) -> None:
        """Passes the training epoch on to the base policy, if it uses one."""
        if hasattr(self.base_policy, "set_epoch"):
            self.base_policy.set_epoch(epoch)

    def compute_target(self, teacher_logits, labels):
        return super().compute_target(self.standardize(teacher_logits), labels)

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        teacher = self.standardize(teacher_logits)
        student = self.standardize(student_logits)
        if self.base_policy is not None:
            return self.base_policy.kd_loss(teacher, student, labels, temperature_scaling)
        probs = kd_ops.tempered_softmax(teacher, self.temperature)
        loss = distillation_loss(probs, student, self.temperature, temperature_scaling)
        return loss, probs, {}
