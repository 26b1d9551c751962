"""ISATS: instance-specific asymmetric temperature scaling (the paper's method)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import check_int_at_least, check_positive, check_range


@keras.saving.register_keras_serializable(package="keras_kdcap")
class ISATS(TemperaturePolicy):
    """Per sample, ATS at the temperature that makes non-target classes most distinct.

    `tau*(x) = argmax_tau v(q(x; tau))` over a log-spaced grid in
    `[min_temperature, max_temperature]` (one `[B, K, C]` evaluation), then
    ATS with `tau2 = tau*` and `tau1 = target_ratio * tau*` (or a fixed
    `target_temperature`). The choices the paper leaves open are arguments;
    docs/policies/isats.md states the defaults and why.

    Args:
        min_temperature: lower end of the search, > 0.
        max_temperature: upper end of the search.
        num_candidates: grid size K >= 2.
        refine: refine the arg-max on a finer grid around the best point.
        target_ratio: `tau1 = target_ratio * tau*` (ignored when
            `target_temperature` is set).
        target_temperature: a fixed `tau1` instead of the ratio rule.
        fallback_temperature: for samples the teacher misclassifies (their
            maximiser runs to `min_temperature`), plain KD at this
            temperature (`tau1 = tau2 = fallback_temperature`).
        student_temperature: the student's `s`; None matches `tau2` per
            sample.
        keep_target_first: cap `tau1` per sample so the label stays ranked
            first (METHODS.md); the cap rate is reported as a metric.
        name: layer name.
    """

    metric_names = ("temperature", "fallback_rate", "target_cap_rate")

    def __init__(
        self,
        min_temperature: float = 0.5,
        max_temperature: float = 20.0,
        num_candidates: int = 32,
        refine: bool = False,
        target_ratio: float = 2.0,
        target_temperature: float | None = None,
        fallback_temperature: float = 4.0,
        student_temperature: float | None = None,
        keep_target_first: bool = True,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.min_temperature, self.max_temperature = check_range(
            "min_temperature", min_temperature, "max_temperature", max_temperature
        )
        self.num_candidates = check_int_at_least("num_candidates", num_candidates, 2)
        self.refine = bool(refine)
        self.target_ratio = check_positive("target_ratio", target_ratio)
        self.target_temperature = (
            None
            if target_temperature is None
            else check_positive("target_temperature", target_temperature)
        )
        self.fallback_temperature = check_positive("fallback_temperature", fallback_temperature)
        self.student_temperature = (
            None
            if student_temperature is None
            else check_positive("student_temperature", student_temperature)
        )
        self.keep_target_first = bool(keep_target_first)

    def search(self, teacher_logits, labels):
        """The per-sample variance-maximising temperature `tau*`, `[B]`."""
        return kd_ops.isats_temperature(
            teacher_logits,
            labels,
            self.min_temperature,
            self.max_temperature,
            self.num_candidates,
            refine=self.refine,
        )

    def compute_target(self, teacher_logits, labels):
        tau_star = self.search(teacher_logits, labels)
        correct = kd_ops.label_ranked_first(teacher_logits, labels) > 0.5
        tau2 = ops.where(correct, tau_star, self.fallback_temperature)
        if self.target_temperature is None:
            tau1 = self.target_ratio * tau2
        else:
            tau1 = ops.full(ops.shape(tau2), self.target_temperature)
        tau1 = ops.where(correct, tau1, self.fallback_temperature)
        capped = ops.zeros(ops.shape(tau2))
        if self.keep_target_first:
            tau1, capped = kd_ops.keep_target_first(teacher_logits, labels, tau1, tau2)
        probs = kd_ops.asymmetric_softmax(teacher_logits, labels, tau1, tau2)
        if self.student_temperature is None:
            student_temperature = tau2
        else:
            student_temperature = ops.full(ops.shape(tau2), self.student_temperature)
        stats = {
            "temperature": tau2,
            "fallback_rate": 1.0 - ops.cast(correct, "float32"),
            "target_cap_rate": capped,
        }
        return probs, student_temperature, stats

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            min_temperature=self.min_temperature,
            max_temperature=self.max_temperature,
            num_candidates=self.num_candidates,
            refine=self.refine,
            target_ratio=self.target_ratio,
            target_temperature=self.target_temperature,
            fallback_temperature=self.fallback_temperature,
            student_temperature=self.student_temperature,
            keep_target_first=self.keep_target_first,
        )
        return config
