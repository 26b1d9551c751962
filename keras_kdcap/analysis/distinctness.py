"""Non-target distinctness: how much a teacher's non-target probabilities differ.

The paper's first observation: the larger the teacher, the flatter (less
distinct) its non-target probabilities. Measured per teacher and temperature
with the same numerics the ISATS policy and the RegT loss use
(`tempered_softmax`, `non_target_variance`, `isats_temperature`, all in
float32 through `keras.ops`), so the analysis sees exactly what training sees;
the per-sample values are then averaged in float64 NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_kdcap import ops as kd_ops
from keras_kdcap.analysis._arrays import check_logits, labels_per_row, labels_to_numpy, to_numpy
from keras_kdcap.policies.isats import isats_temperature, temperature_grid


def _chunks(num_samples: int, batch_size: int):
    for start in range(0, num_samples, batch_size):
        yield slice(start, min(start + batch_size, num_samples))


def per_sample_non_target(logits: Any, labels: Any, temperature: float, batch_size: int = 4096):
    """Per-sample non-target quantities at one temperature.

    Args:
        logits: `[N, C]` teacher logits (numpy array or backend tensor).
        labels: `[N]`, `[N, 1]` or one-hot `[N, C]` labels.
        temperature: softmax temperature, > 0.
        batch_size: samples per `keras.ops` evaluation (bounds memory).

    Returns:
        Dict of float64 `[N]` arrays: `variance` (v(q), population variance of
        the C-1 non-target probabilities, not renormalised), `target_probability`
        (p_y) and `non_target_mass` (sum of the non-target probabilities,
        `1 - p_y` computed without cancellation).
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0; got {temperature}.")
    logits = check_logits(logits).astype(np.float32)
    num_classes = logits.shape[-1]
    labels = labels_to_numpy(labels, num_classes)
    variance, target, mass = [], [], []
    for part in _chunks(len(labels), batch_size):
        y = labels[part].astype(np.int32)
        probs = kd_ops.tempered_softmax(logits[part], float(temperature))
        variance.append(to_numpy(kd_ops.non_target_variance(probs, y), np.float64))
        probs = to_numpy(probs, np.float64)
        rows = np.arange(len(y))
        target.append(probs[rows, y])
        mass.append(_mass(probs, y))
    return {
        "variance": np.concatenate(variance) if variance else np.zeros(0),
        "target_probability": np.concatenate(target) if target else np.zeros(0),
        "non_target_mass": np.concatenate(mass) if mass else np.zeros(0),
    }


def _mass(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sum of the non-target entries (no `1 - p_y` cancellation for p_y near 1)."""
    masked = probs.copy()
    masked[np.arange(len(labels)), labels] = 0.0
    return masked.sum(axis=-1)


def non_target_stats(
    logits: Any, labels: Any, temperature: float = 1.0, batch_size: int = 4096
) -> dict[str, float]:
    """Mean non-target distinctness of a teacher over a dataset, at one temperature.

    With `p = softmax(f / T)` and `q` its C-1 non-target entries:
    `variance = mean_x v(q)`, `std = mean_x sqrt(v(q))` (the form the ATS code
    plots), `derived_average = mean_x (1 - p_y) / (C - 1)` (the mean non-target
    probability), `target_probability = mean_x p_y` and
    `accuracy = mean_x [argmax f = y]` (temperature-independent).

    Args:
        logits: `[N, C]` teacher logits (numpy array or backend tensor).
        labels: `[N]`, `[N, 1]` or one-hot `[N, C]` labels.
        temperature: softmax temperature T, > 0.
        batch_size: samples per `keras.ops` evaluation (bounds memory).

    Returns:
        Dict of Python floats: `variance`, `std`, `derived_average`,
        `target_probability`, `accuracy`, plus `temperature` and
        `num_samples`.

    Example:
        >>> import numpy as np
        >>> stats = non_target_stats(np.array([[3.0, 1.0, 0.0]]), np.array([0]), 1.0)
        >>> round(stats["accuracy"], 1)
        1.0
    """
    logits = check_logits(logits)
    num_classes = logits.shape[-1]
    labels = labels_per_row(labels, num_classes, logits, "logits")
    if len(labels) == 0:
        raise ValueError("`logits` is empty: nothing to average.")
    values = per_sample_non_target(logits, labels, temperature, batch_size)
    correct = np.argmax(logits, axis=-1) == labels
    return {
        "temperature": float(temperature),
        "num_samples": int(len(labels)),
        "variance": float(np.mean(values["variance"])),
        "std": float(np.mean(np.sqrt(values["variance"]))),
        "derived_average": float(np.mean(values["non_target_mass"]) / (num_classes - 1)),
        "target_probability": float(np.mean(values["target_probability"])),
        "accuracy": float(np.mean(correct)),
    }


def non_target_profile(
    logits: Any, labels: Any, temperatures: Sequence[float] = (1.0, 4.0), batch_size: int = 4096
) -> list[dict[str, float]]:
    """`non_target_stats` at several temperatures.

    Args:
        logits: `[N, C]` teacher logits.
        labels: `[N]` labels.
        temperatures: the temperatures, each > 0.
        batch_size: samples per `keras.ops` evaluation.

    Returns:
        One `non_target_stats` dict per temperature, in order.
    """
    return [non_target_stats(logits, labels, t, batch_size) for t in temperatures]


def tau_star_stats(
    logits: Any,
    labels: Any,
    min_temperature: float = 0.5,
    max_temperature: float = 20.0,
    num_candidates: int = 32,
    refine: bool = False,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Distribution of the ISATS temperature tau*(x) over a dataset.

    tau*(x) = argmax over a log-spaced grid of v(q(x; tau)), computed by
    `keras_kdcap.policies.isats.isats_temperature` (the ISATS policy's own search, with
    the ISATS defaults), in chunks of `batch_size` samples.

    Args:
        logits: `[N, C]` teacher logits.
        labels: `[N]` labels.
        min_temperature: lower end of the search grid.
        max_temperature: upper end of the search grid.
        num_candidates: grid size.
        refine: whether to refine around the best grid point.
        batch_size: samples per `[B, K, C]` evaluation (bounds memory).

    Returns:
        Dict with `tau_star` (float64 `[N]` array), its `mean`, `median`,
        `q10`, `q90`, `at_min` (fraction at the grid's lower end, where the
        maximiser of misclassified samples runs), `at_max` (fraction at the upper
        end), `misclassified` (fraction the teacher gets wrong), `correct`
        (bool `[N]`, argmax = label) and `mean_correct` / `median_correct`
        (over the correctly classified samples, the ones ISATS uses tau* for;
        NaN if none), plus the search settings.
    """
    logits = check_logits(logits).astype(np.float32)
    labels = labels_to_numpy(labels, logits.shape[-1])
    if len(labels) == 0:
        raise ValueError("`logits` is empty: nothing to search.")
    taus = []
    for part in _chunks(len(labels), batch_size):
        tau = isats_temperature(
            logits[part],
            labels[part].astype(np.int32),
            min_temperature=min_temperature,
            max_temperature=max_temperature,
            num_candidates=num_candidates,
            refine=refine,
        )
        taus.append(to_numpy(tau, np.float64))
    tau = np.concatenate(taus)
    correct = np.argmax(logits, axis=-1) == labels
    grid = to_numpy(temperature_grid(min_temperature, max_temperature, num_candidates), np.float64)
    return {
        "tau_star": tau,
        "mean": float(np.mean(tau)),
        "median": float(np.median(tau)),
        "q10": float(np.quantile(tau, 0.1)),
        "q90": float(np.quantile(tau, 0.9)),
        "at_min": float(np.mean(tau <= grid[0] * (1 + 1e-6))),
        "at_max": float(np.mean(tau >= grid[-1] * (1 - 1e-6))),
        "misclassified": float(1.0 - np.mean(correct)),
        "correct": correct,
        "median_correct": float(np.median(tau[correct])) if correct.any() else float("nan"),
        "mean_correct": float(np.mean(tau[correct])) if correct.any() else float("nan"),
        "min_temperature": float(min_temperature),
        "max_temperature": float(max_temperature),
        "num_candidates": int(num_candidates),
    }
