"""ISATS: instance-specific asymmetric temperature scaling (the paper's method)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_kdcap import ops as kd_ops
from keras_kdcap.policies.base import TemperaturePolicy
from keras_kdcap.validation import (
    check_fraction,
    check_int_at_least,
    check_positive,
    check_range,
)

#: how the candidates are evaluated: one `[N, K, C]` tensor ("grid"), one
#: `[N, C]` candidate at a time ("scan"), or chosen from the sizes ("auto").
SEARCHES = ("auto", "grid", "scan")
#: "auto" scans when the grid tensor would hold more floats than this (128 MiB
#: of float32), counting an unknown number of rows as `_ASSUMED_ROWS`.
SCAN_ELEMENTS = 2**25
_ASSUMED_ROWS = 256


def temperature_grid(min_temperature: float, max_temperature: float, num_candidates: int):
    """Log-spaced candidate temperatures, both ends included.

    Args:
        min_temperature: smallest candidate, > 0.
        max_temperature: largest candidate, > min_temperature.
        num_candidates: K >= 2.

    Returns:
        float32 `[K]` tensor.
    """
    return ops.exp(
        ops.linspace(math.log(min_temperature), math.log(max_temperature), num_candidates)
    )


def _log_variance(scaled, labels):
    """`log v(q)` of `softmax(scaled)` along the last axis, free of underflow: `[B, K]`.

    With `m` the largest non-target entry of `scaled`, `L` its log-partition
    and `r_c = exp(scaled_c - m)` (largest non-target entry 1), `q = exp(m - L) r`
    and `log v(q) = 2 (m - L) + log v(r)`. Computing `v(q)` from float32
    probabilities instead underflows to 0 at every temperature once the label
    leads by more than about 44 * tau_max (a confident teacher), and the
    arg-max then falls on the first grid point, `min_temperature`. `log 0 =
    -inf` where `v(r) = 0` (equal non-target logits, C = 2).
    """
    mask = ops.expand_dims(kd_ops.target_mask(labels, scaled.shape[-1], dtype="bool"), 1)
    log_total = ops.logsumexp(scaled, axis=-1)
    top = ops.max(ops.where(mask, -float("inf"), scaled), axis=-1)
    relative = ops.exp(ops.where(mask, 0.0, scaled - ops.expand_dims(top, -1)))
    return 2.0 * (top - log_total) + ops.log(kd_ops.non_target_variance(relative, labels))


def _log_variance_at(logits, labels, temperatures):
    """`log v(q(x; tau))` for every sample and candidate: `[B, K]`.

    `temperatures` is a `[K]` grid shared by the batch or `[B, K]` per sample.
    """
    scaled = ops.expand_dims(logits, 1) / ops.expand_dims(temperatures, -1)
    return _log_variance(scaled, labels)


def _candidate_log_variance(logits, mask, target, temperature):
    """`log v(q(x; tau))` of one candidate per row, `[N]`, from `[N, C]` temporaries.

    The formula of `_log_variance` written for one candidate so that no more
    than a few `[N, C]` tensors are alive at once (eager torch included):
    with `m` the largest non-target entry of `s = f / tau`, `r = exp(s - m)`
    off the label and `M = max(s_y, m)`, the log-partition is
    `L = M + log(exp(m - M) sum r + exp(s_y - M))`.

    Args:
        logits: float32 `[N, C]`.
        mask: bool `[N, C]`, true at the label.
        target: float32 `[N]`, the label's logit.
        temperature: a scalar or `[N]` candidate.
    """
    per_row = len(temperature.shape) == 1
    scaled = logits / (ops.expand_dims(temperature, -1) if per_row else temperature)
    top = ops.max(ops.where(mask, -float("inf"), scaled), axis=-1)
    relative = ops.where(mask, 0.0, ops.exp(scaled - ops.expand_dims(top, -1)))
    del scaled  # eager backends free it here
    lead = ops.maximum(target / temperature - top, 0.0)
    total = ops.sum(relative, axis=-1)
    log_total = (
        top + lead + ops.log(ops.exp(-lead) * total + ops.exp(target / temperature - top - lead))
    )
    count = float(logits.shape[-1] - 1)
    centred = ops.where(mask, 0.0, relative - ops.expand_dims(total / count, -1))
    del relative
    variance = ops.sum(centred * centred, axis=-1) / count
    return 2.0 * (top - log_total) + ops.log(variance)


def _scan_argmax(logits, labels, temperatures):
    """Grid arg-max of `log v` with a running maximum over the candidates.

    Peak memory is a few `[N, C]` tensors whatever K (`fori_loop`: one
    candidate per iteration). Ties keep the first candidate, as `argmax`.

    Args:
        logits: float32 `[N, C]`.
        labels: int32 `[N]`.
        temperatures: `[K]` shared or `[N, K]` per-row candidates.

    Returns:
        `(index, value)`: int32 `[N]` best candidates and their `log v`.
    """
    mask = kd_ops.target_mask(labels, logits.shape[-1], dtype="bool")
    target = ops.take_along_axis(logits, ops.expand_dims(labels, -1), axis=-1)[:, 0]
    rows = ops.shape(logits)[0]

    def body(k, state):
        best_index, best_value = state
        k = ops.cast(k, "int32")
        value = _candidate_log_variance(logits, mask, target, ops.take(temperatures, k, axis=-1))
        better = value > best_value
        return (ops.where(better, k, best_index), ops.where(better, value, best_value))

    start = (ops.zeros((rows,), dtype="int32"), ops.full((rows,), -float("inf")))
    return ops.fori_loop(0, temperatures.shape[-1], body, start)


def _check_search(search: str) -> str:
    """Returns `search`; raises ValueError unless it is one of `SEARCHES`."""
    if search not in SEARCHES:
        raise ValueError(f"`search` must be one of {SEARCHES}; got {search!r}.")
    return search


def _optional(check, name: str, value):
    """`check(name, value)`, or None where `value` is None (the argument is unset)."""
    return None if value is None else check(name, value)


def _scans(search: str, logits, num_candidates: int) -> bool:
    """Whether `search` (or "auto" for these sizes) evaluates one candidate at a time."""
    if _check_search(search) != "auto":
        return search == "scan"
    rows = logits.shape[0] if isinstance(logits.shape[0], int) else _ASSUMED_ROWS
    return rows * num_candidates * logits.shape[-1] > SCAN_ELEMENTS


def isats_temperature(
    logits,
    labels,
    min_temperature: float = 0.5,
    max_temperature: float = 20.0,
    num_candidates: int = 32,
    refine: bool = False,
    refine_candidates: int = 8,
    search: str = "auto",
):
    """Per-sample temperature maximising the non-target variance (ISATS).

    The grid arg-max over `num_candidates` log-spaced temperatures, per
    sample: "grid" evaluates them in one `[B, K, C]` tensor, "scan" one
    `[B, C]` candidate at a time with a running arg-max (peak memory a few
    `[B, C]` tensors whatever K, for vocabulary-sized C), "auto" scans when
    the grid tensor would exceed `SCAN_ELEMENTS` floats. Both give the grid
    arg-max (up to float32 rounding at near-ties). With `refine=True`, a
    second log-spaced grid of `refine_candidates` points between the
    neighbours of the best grid point is evaluated and the best of both
    grids is returned, so the variance at the returned temperature is never
    below the grid's best.

    Args:
        logits: `[B, C]` teacher logits.
        labels: int `[B]` labels.
        min_temperature: lower end of the search, > 0.
        max_temperature: upper end, > min_temperature.
        num_candidates: grid size K >= 2.
        refine: whether to refine around the best grid point.
        refine_candidates: points of the refinement grid.
        search: "auto", "grid" or "scan" (see above).

    Returns:
        float32 `[B]` temperatures, with `stop_gradient` applied.
    """
    logits = ops.stop_gradient(kd_ops.as_float32(logits))
    scan = _scans(search, logits, num_candidates)
    grid = temperature_grid(min_temperature, max_temperature, num_candidates)
    if scan:
        best, grid_value = _scan_argmax(logits, labels, grid)
    else:
        log_variance = _log_variance_at(logits, labels, grid)
        best = ops.argmax(log_variance, axis=-1)
    tau = ops.take(grid, best)
    if refine:
        step = (math.log(max_temperature) - math.log(min_temperature)) / (num_candidates - 1)
        log_lo = ops.maximum(ops.log(tau) - step, math.log(min_temperature))
        log_hi = ops.minimum(ops.log(tau) + step, math.log(max_temperature))
        fractions = ops.linspace(0.0, 1.0, refine_candidates)
        local = ops.exp(
            ops.expand_dims(log_lo, -1)
            + ops.expand_dims(log_hi - log_lo, -1) * ops.expand_dims(fractions, 0)
        )
        if scan:
            local_best, local_value = _scan_argmax(logits, labels, local)
        else:
            local_variance = _log_variance_at(logits, labels, local)
            local_best = ops.argmax(local_variance, axis=-1)
            local_value = ops.max(local_variance, axis=-1)
            grid_value = ops.max(log_variance, axis=-1)
        local_tau = ops.take_along_axis(local, ops.expand_dims(local_best, -1), axis=-1)[:, 0]
        tau = ops.where(local_value > grid_value, local_tau, tau)
    return ops.stop_gradient(tau)


def margin_target_temperature(logits, labels, other_temperature, target_margin: float):
    """`tau1` that keeps the fraction `target_margin` of the label's lead at `tau2`.

    With `m = max_{c != y} f_c` and `kappa = target_margin`, where the teacher
    ranks the label first (`f_y >= m`) and `m > 0`, `tau1` solves
    `f_y / tau1 = (m + kappa (f_y - m)) / tau2`:

        tau1 = tau2 * f_y / (m + kappa (f_y - m))

    `kappa = 1` gives `tau1 = tau2` exactly (the symmetric softmax), `kappa = 0`
    ties the label with the best other class (the bound of `keep_target_first`
    without its 0.1% margin). Elsewhere (`m <= 0`, or the label not first)
    `tau1 = tau2`.

    Args:
        logits: `[B, C]` teacher logits.
        labels: int `[B]` labels.
        other_temperature: `tau2`, `[B]`.
        target_margin: `kappa` in [0, 1].

    Returns:
        float32 `[B]` target temperatures.

    Example:
        >>> f, y = keras.ops.array([[3.0, 1.0, 2.0]]), keras.ops.array([0])
        >>> tau1 = margin_target_temperature(f, y, keras.ops.full((1,), 2.0), 0.5)
        >>> # [2.4] = 2 * 3 / (2 + 0.5 * (3 - 2))
    """
    logits = kd_ops.as_float32(logits)
    other_temperature = kd_ops.as_float32(other_temperature)
    target = kd_ops.target_logit(logits, labels)
    other_max = kd_ops.max_non_target_logit(logits, labels)
    applies = ops.logical_and(target >= other_max, other_max > 0.0)
    # `f_y - (1 - kappa)(f_y - m)` is `m + kappa (f_y - m)`, written so that kappa = 1
    # divides f_y by itself (exactly 1): tau1 = tau2 to the bit.
    kept = target - (1.0 - target_margin) * (target - other_max)
    ratio = target / ops.where(applies, kept, 1.0)
    return ops.where(applies, other_temperature * ratio, other_temperature)


@keras.saving.register_keras_serializable(package="keras_kdcap")
class ISATS(TemperaturePolicy):
    """Per sample, ATS at the temperature that makes non-target classes most distinct.

    `tau*(x) = argmax_tau v(q(x; tau))` over a log-spaced grid in
    `[min_temperature, max_temperature]` (one `[B, K, C]` evaluation, or one
    `[B, C]` candidate at a time for large `B * K * C`: `search`), then
    ATS with `tau2 = tau*` and `tau1 = target_ratio * tau*` (or a fixed
    `target_temperature`, or `tau1` from the teacher's own margin:
    `target_margin`). The choices the paper leaves open are arguments;
    docs/policies/isats.md states the defaults and why.

    With `target_margin = kappa`, for a sample the teacher ranks correctly
    (`f_y >= m`, `m = max_{c != y} f_c > 0`), `tau1` keeps the fraction
    `kappa` of the label's lead over the best other class at `tau2`:
    `f_y / tau1 = (m + kappa (f_y - m)) / tau2`, i.e.
    `tau1 = tau2 * f_y / (m + kappa (f_y - m))` (`margin_target_temperature`).
    `kappa = 1` is `tau1 = tau2` (`target_ratio=1`); `kappa = 0` is the
    `keep_target_first` cap (with it on, the cap then binds and keeps its
    0.1% margin: the label strictly first). Where `m <= 0`, `tau1 = tau2`;
    misclassified samples fall back as with the ratio rule.

    The target class is the label, the arg-max of a soft label row (MixUp,
    CutMix), or without labels (`alpha=0`) the teacher's top class.

    Args:
        min_temperature: lower end of the search, > 0.
        max_temperature: upper end of the search.
        num_candidates: grid size K >= 2.
        refine: refine the arg-max on a finer grid around the best point.
        target_ratio: `tau1 = target_ratio * tau*` (ignored when
            `target_temperature` or `target_margin` is set).
        target_temperature: a fixed `tau1` instead of the ratio rule.
        target_margin: `kappa` in [0, 1]: `tau1` per sample from the
            teacher's margin (above) instead of the ratio rule; None (the
            default) keeps the ratio rule. Not together with
            `target_temperature`.
        fallback_temperature: for samples the teacher misclassifies (their
            maximiser runs to `min_temperature`), plain KD at this
            temperature (`tau1 = tau2 = fallback_temperature`).
        student_temperature: the student's `s`; None matches `tau2` per
            sample.
        keep_target_first: cap `tau1` per sample so the label stays ranked
            first (METHODS.md); the cap rate is reported as a metric. With
            `target_margin` it binds where `kappa (f_y - m) < 0.001 m`: every
            correct sample with `m > 0` at `kappa = 0`, near-ties otherwise.
        search: "auto" (default), "grid" or "scan": how the candidates are
            evaluated (`isats_temperature`); "scan" bounds the search's
            memory to a few `[B, C]` tensors, for vocabulary-sized C.
        name: layer name.
    """

    registry_name = "isats"

    metric_names = ("temperature", "fallback_rate", "target_cap_rate")
    config_attributes = {"search": "search_mode"}  # `search` is the method

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
        search: str = "auto",
        target_margin: float | None = None,
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
        self.target_temperature = _optional(
            check_positive, "target_temperature", target_temperature
        )
        if target_margin is not None and target_temperature is not None:
            raise ValueError(
                "`target_margin` and `target_temperature` both set `tau1`: pass one of them; "
                f"got target_margin={target_margin!r}, target_temperature={target_temperature!r}."
            )
        self.target_margin = _optional(check_fraction, "target_margin", target_margin)
        self.fallback_temperature = check_positive("fallback_temperature", fallback_temperature)
        self.student_temperature = _optional(
            check_positive, "student_temperature", student_temperature
        )
        self.keep_target_first = bool(keep_target_first)
        self.search_mode = _check_search(search)

    def search(self, teacher_logits, labels):
        """The per-sample variance-maximising temperature `tau*`, `[B]`."""
        return isats_temperature(
            teacher_logits,
            labels,
            self.min_temperature,
            self.max_temperature,
            self.num_candidates,
            refine=self.refine,
            search=self.search_mode,
        )

    def compute_target(self, teacher_logits, labels):
        tau_star = self.search(teacher_logits, labels)
        correct = kd_ops.label_ranked_first(teacher_logits, labels) > 0.5
        tau2 = ops.where(correct, tau_star, self.fallback_temperature)
        if self.target_margin is not None:
            tau1 = margin_target_temperature(teacher_logits, labels, tau2, self.target_margin)
        elif self.target_temperature is None:
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
