"""CTKD: curriculum temperature, learned adversarially (Li et al., AAAI 2023)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.losses import distillation_loss
from keras_kdcap.policies.schedule import ScheduledPolicy
from keras_kdcap.validation import (
    check_int_at_least,
    check_non_negative,
    check_positive,
    check_range,
    deprecated_name,
)


def gradient_reversal(x, lam):
    """Identity forward, gradient times `-lam` backward, on every backend.

    `stop_gradient(x * (1 + lam)) - lam * x` has the value `x` and the
    gradient `-lam`.

    Args:
        x: a tensor.
        lam: the reversal strength (no gradient flows to it).

    Returns:
        A tensor equal to `x`.
    """
    lam = ops.stop_gradient(lam)
    return ops.stop_gradient(x * (1.0 + lam)) - lam * x


@keras.saving.register_keras_serializable(package="keras_kdcap")
class CTKD(ScheduledPolicy):
    """Plain KD at one learnable global temperature that plays against the student.

    `T = min_temperature + (max_temperature - min_temperature) * sigmoid(theta)`
    (the official `1 + 20 * sigmoid` with the defaults), `theta` a trainable
    scalar of this layer, so the Distiller's optimizer updates it. `T` enters
    the loss through a gradient-reversal layer: the student descends
    `T^2 KL(softmax(f/T) || softmax(g/T))`, the temperature ascends it with
    strength `lambda(e) = lambda_max * (1 - cos(pi * min((e + 1) / E, 1))) / 2`
    for the 0-based Keras epoch `e` and `E = curriculum_epochs` (`lambda_max`
    at once when `E = 0`). The epoch is a non-trainable variable that
    `Distiller.fit` advances (`on_epoch_begin`); outside `fit`, call
    `set_epoch`. `current_temperature()` gives `T` (a tensor; the numbers of
    this class are its bounds and `initial_temperature`).
    docs/policies/ctkd.md has the details.

    Args:
        initial_temperature: `T` before training, strictly between the bounds.
        min_temperature: lower bound of `T`, > 0.
        max_temperature: upper bound of `T`.
        lambda_max: the reversal strength at the end of the curriculum, >= 0.
        curriculum_epochs: `E`, epochs for lambda to rise from 0 to
            `lambda_max`; 0 uses `lambda_max` from the start.
        name: layer name.

    Example:
        >>> policy = CTKD(initial_temperature=4.0, curriculum_epochs=10)
    """

    registry_name = "ctkd"

    metric_names = ("temperature", "ctkd_lambda")

    def __init__(
        self,
        initial_temperature: float = 4.0,
        min_temperature: float = 1.0,
        max_temperature: float = 21.0,
        lambda_max: float = 1.0,
        curriculum_epochs: int = 10,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.min_temperature, self.max_temperature = check_range(
            "min_temperature", min_temperature, "max_temperature", max_temperature
        )
        initial_temperature = check_positive("initial_temperature", initial_temperature)
        if not self.min_temperature < initial_temperature < self.max_temperature:
            raise ValueError(
                f"`initial_temperature` must lie strictly between `min_temperature` "
                f"({self.min_temperature}) and `max_temperature` ({self.max_temperature}); "
                f"got {initial_temperature}."
            )
        self.initial_temperature = initial_temperature
        self.lambda_max = check_non_negative("lambda_max", lambda_max)
        self.curriculum_epochs = check_int_at_least("curriculum_epochs", curriculum_epochs, 0)
        fraction = (initial_temperature - self.min_temperature) / (
            self.max_temperature - self.min_temperature
        )
        self.temperature_logit = self.add_weight(
            name="temperature_logit",
            shape=(),
            initializer=keras.initializers.Constant(math.log(fraction / (1.0 - fraction))),
            trainable=True,
            dtype="float32",
        )

    def temperature(self):
        """Deprecated name of `current_temperature` (goes in the next release)."""
        deprecated_name("temperature()", "current_temperature()", "CTKD")
        return self.current_temperature()

    def current_temperature(self):
        """The current temperature `T`, a float32 scalar tensor."""
        span = self.max_temperature - self.min_temperature
        return self.min_temperature + span * ops.sigmoid(
            ops.convert_to_tensor(self.temperature_logit)
        )

    def grl_lambda(self):
        """The reversal strength of the current epoch, a float32 scalar tensor."""
        if self.curriculum_epochs == 0:
            return ops.convert_to_tensor(self.lambda_max, dtype="float32")
        progress = ops.minimum(
            (ops.convert_to_tensor(self.epoch) + 1.0) / self.curriculum_epochs, 1.0
        )
        return self.lambda_max * 0.5 * (1.0 - ops.cos(math.pi * progress))

    def compute_target(self, teacher_logits, labels):
        temperature = ops.ones((ops.shape(teacher_logits)[0],)) * self.current_temperature()
        probs = kd_ops.tempered_softmax(teacher_logits, temperature)
        return probs, temperature, {}

    def kd_loss(self, teacher_logits, student_logits, labels, temperature_scaling: bool = True):
        lam = self.grl_lambda()
        temperature = gradient_reversal(self.current_temperature(), lam)
        temperature = ops.ones((ops.shape(teacher_logits)[0],)) * temperature
        probs = kd_ops.tempered_softmax(teacher_logits, temperature)
        loss = distillation_loss(probs, student_logits, temperature, temperature_scaling)
        stats = {
            "temperature": ops.stop_gradient(temperature),
            "ctkd_lambda": ops.ones_like(loss) * lam,
        }
        return loss, probs, stats
