"""Policies around an optional `base_policy` (SCKD, LogitStandardization)."""

from __future__ import annotations

import keras

from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.policies.fixed import tempered_target


class WrapperPolicy(TemperaturePolicy):
    """A policy that wraps `self.base_policy`, or plain KD at `self.temperature`.

    It passes `prepare`, `on_epoch_begin` and `check_ready` on to the base
    policy, reports its statistics, takes its target, and saves it in the
    config.
    """

    #: set by the subclass's `__init__` (no class default: torch keeps layers apart).
    base_policy: TemperaturePolicy | None

    @staticmethod
    def check_base_policy(base_policy: TemperaturePolicy | None) -> TemperaturePolicy | None:
        """Returns `base_policy`; raises TypeError unless it is a policy or None."""
        if base_policy is not None and not isinstance(base_policy, TemperaturePolicy):
            raise TypeError(
                "`base_policy` must be a keras_kdcap TemperaturePolicy or None; "
                f"got {type(base_policy).__name__}."
            )
        return base_policy

    @property
    def metric_names(self) -> tuple[str, ...]:
        return () if self.base_policy is None else tuple(self.base_policy.metric_names)

    def compute_target(self, teacher_logits, labels):
        """The base policy's target, or `softmax(f / T)` at `s = T` without one."""
        if self.base_policy is not None:
            return self.base_policy.compute_target(teacher_logits, labels)
        return tempered_target(teacher_logits, self.temperature)

    def check_ready(self) -> None:
        if self.base_policy is not None:
            self.base_policy.check_ready()

    def prepare(self, teacher: keras.Model, data=None) -> None:
        """Prepares the base policy on the raw teacher (FGCR's relations are per class)."""
        if self.base_policy is not None:
            self.base_policy.prepare(teacher, data)

    def on_epoch_begin(self, epoch: int) -> None:
        if self.base_policy is not None:
            self.base_policy.on_epoch_begin(epoch)

    def get_config(self) -> dict:
        config = super().get_config()
        if self.base_policy is not None:
            config["base_policy"] = keras.saving.serialize_keras_object(self.base_policy)
        return config

    @classmethod
    def from_config(cls, config: dict) -> WrapperPolicy:
        config = dict(config)
        base = config.pop("base_policy", None)
        if base is not None:
            base = keras.saving.deserialize_keras_object(base)
        return cls(base_policy=base, **config)
