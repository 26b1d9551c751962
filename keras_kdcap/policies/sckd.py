"""SCKD: student-customised KD by gradient agreement (Zhu & Wang, ICCV 2021)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.losses import distillation_loss
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.wrapper import WrapperPolicy
from keras_kdcap.validation import check_positive, deprecated_name

#: how the gradient cosine becomes the KD weight.
WEIGHTINGS = ("binary", "clip", "affine")
_TINY_NORM = 1e-37


def _balanced(difference, mask):
    """A row summing to 0, its target entry taken as minus the sum of the others.

    Both gradients are differences of distributions, so their target entry
    is `-sum_{c != y}` of the rest: computed that way, `p_y - 1` keeps its
    precision when the student is confident (no `1 - (1 - eps)`).
    """
    rest = ops.sum(ops.where(mask, 0.0, difference), axis=-1, keepdims=True)
    return ops.where(mask, -rest, difference)


def _unit(vectors):
    """Rows scaled to unit length (zero rows stay zero), without underflow."""
    scale = ops.max(ops.abs(vectors), axis=-1, keepdims=True)
    vectors = ops.where(scale > 0.0, vectors / ops.maximum(scale, _TINY_NORM), 0.0)
    norm = ops.sqrt(ops.sum(vectors * vectors, axis=-1, keepdims=True))
    return vectors / ops.maximum(norm, 1.0)


def gradient_cosine(student_logits, labels, teacher_probs, student_temperature):
    """Per-sample cosine between the CE and KD gradients w.r.t. the student logits.

    `grad_CE = softmax(g) - onehot(y)`, `grad_KD = s * (softmax(g / s) - t)`
    (the gradient of `s^2 KL(t || softmax(g / s))`; the positive factor does
    not change the cosine). No gradient flows through the result.

    Args:
        student_logits: `[B, C]` student logits `g`.
        labels: int `[B]` labels.
        teacher_probs: `[B, C]` teacher target `t`.
        student_temperature: `s`, scalar or `[B]`.

    Returns:
        float32 `[B]` cosines in [-1, 1] (0 where a gradient vanishes).
    """
    logits = ops.stop_gradient(kd_ops.as_float32(student_logits))
    target = ops.stop_gradient(kd_ops.as_float32(teacher_probs))
    mask = kd_ops.target_mask(labels, logits.shape[-1], dtype="bool")
    grad_ce = _balanced(ops.softmax(logits, axis=-1), mask)
    grad_kd = _balanced(kd_ops.tempered_softmax(logits, student_temperature) - target, mask)
    return ops.stop_gradient(ops.sum(_unit(grad_ce) * _unit(grad_kd), axis=-1))


@keras.saving.register_keras_serializable(package="keras_kdcap")
class SCKD(WrapperPolicy):
    """KD weighted per sample by how well its gradient agrees with the CE gradient.

    `KD = w(cos) * s^2 KL(t || softmax(g / s))`, `cos` the cosine between
    the CE and KD gradients w.r.t. the student's logits (`gradient_cosine`),
    `w` behind `stop_gradient`:
    "binary" `1[cos > 0]` (transfer only where the student benefits),
    "clip" `max(cos, 0)`, "affine" `(1 + cos) / 2`. The target is
    `softmax(f / T)` at `s = T`, or a base policy's. This per-sample,
    logit-space reading is the project's (docs/policies/sckd.md).

    The target class is the label, the arg-max of a soft label row (MixUp,
    CutMix), or without labels (`alpha=0`) the teacher's top class.

    Args:
        temperature: `T`, > 0, when `base_policy` is None.
        weighting: "binary" (default), "clip" or "affine".
        base_policy: a target-based policy (FixedTemperature, ATS, ISATS,
            FGCR) giving `t` and `s`; policies with their own KD term (DKD,
            CTKD, LogitStandardization) are rejected.
        name: layer name.

    Example:
        >>> policy = SCKD(temperature=4.0, weighting="binary")
    """

    registry_name = "sckd"

    def __init__(
        self,
        temperature: float = 4.0,
        weighting: str = "binary",
        base_policy: TemperaturePolicy | None = None,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {WEIGHTINGS}; got {weighting!r}.")
        self.weighting = weighting
        self.base_policy = self.check_base_policy(base_policy)
        if base_policy is not None and type(base_policy).kd_loss is not TemperaturePolicy.kd_loss:
            raise ValueError(
                f"`base_policy` cannot be {type(base_policy).__name__}: SCKD needs a "
                "policy whose KD term is s^2 KL(t || softmax(g / s)) (FixedTemperature, "
                "ATS, ISATS, FGCR)."
            )

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("sckd_weight", "grad_cosine", *super().metric_names)

    def weight(self, cosine):
        """Deprecated name of `kd_weight` (goes in the next release)."""
        deprecated_name("weight()", "kd_weight()", "SCKD")
        return self.kd_weight(cosine)

    def kd_weight(self, cosine):
        """The KD weight of each sample from its gradient cosine, `[B]`."""
        if self.weighting == "binary":
            return ops.cast(cosine > 0.0, "float32")
        if self.weighting == "clip":
            return ops.maximum(cosine, 0.0)
        return 0.5 * (1.0 + cosine)

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        probs, temperature, stats = self.compute_target(teacher_logits, labels)
        cosine = gradient_cosine(student_logits, labels, probs, temperature)
        weight = ops.stop_gradient(self.kd_weight(cosine))
        kd = distillation_loss(probs, student_logits, temperature, temperature_scaling)
        return weight * kd, probs, {**stats, "sckd_weight": weight, "grad_cosine": cosine}
