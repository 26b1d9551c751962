"""Relative class affinity: do two teachers rank the non-target classes alike?

The paper's second observation: teachers of every size agree on which
non-target classes are close to the label. Per sample, the C-1 non-target
classes are ranked by each teacher (ranks of logits; softmax at any
temperature is monotone, so the ranks are temperature-independent) and
compared with top-k set overlap, Spearman's rho and Kendall's tau-b, then
averaged over samples.

Computed in float64 NumPy, vectorised over samples: these are analysis
metrics, not training-step code, and exact tie handling is simpler there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_kdcap.analysis._arrays import check_logits, labels_per_row, non_target_columns


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank (1-based).

    The row-wise equivalent of `scipy.stats.rankdata(method="average")`.

    Args:
        values: `[B, n]` array.

    Returns:
        float64 `[B, n]` ranks.
    """
    values = np.asarray(values, dtype=np.float64)
    b, n = values.shape
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    positions = np.broadcast_to(np.arange(n), (b, n))
    starts_group = np.ones((b, n), dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends_group = np.ones((b, n), dtype=bool)
    ends_group[:, :-1] = starts_group[:, 1:]
    first = np.maximum.accumulate(np.where(starts_group, positions, 0), axis=-1)
    last = np.minimum.accumulate(np.where(ends_group, positions, n - 1)[:, ::-1], axis=-1)[:, ::-1]
    ranks = np.empty((b, n), dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: Pearson correlation of average ranks.

    Args:
        a: `[B, n]` array.
        b: `[B, n]` array.

    Returns:
        float64 `[B]`; NaN where a row is constant (rho undefined).
    """
    ra = average_ranks(a)
    rb = average_ranks(b)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(axis=-1) / denominator
    return np.where(denominator > 0, np.clip(rho, -1.0, 1.0), np.nan)


def kendall_rows(a: np.ndarray, b: np.ndarray, chunk_size: int = 256) -> np.ndarray:
    """Kendall's tau-b of each row pair, by pairwise sign comparisons.

    `tau_b = (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))` with `n_0 = n(n-1)/2`
    pairs, `n_1` / `n_2` the pairs tied in `a` / `b`. The `[chunk, n, n]`
    sign tensors are built `chunk_size` samples at a time to bound memory.

    Args:
        a: `[B, n]` array.
        b: `[B, n]` array.
        chunk_size: samples per chunk.

    Returns:
        float64 `[B]`; NaN where a row is constant (tau undefined).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = a.shape[0]
    tau = np.empty(num, dtype=np.float64)
    for start in range(0, num, chunk_size):
        part = slice(start, min(start + chunk_size, num))
        sign_a = np.sign(a[part, :, None] - a[part, None, :]).astype(np.int8)
        sign_b = np.sign(b[part, :, None] - b[part, None, :]).astype(np.int8)
        # Each unordered pair appears twice in the full n x n matrices.
        s = (sign_a * sign_b).sum(axis=(1, 2), dtype=np.int64) / 2.0
        untied_a = np.count_nonzero(sign_a, axis=(1, 2)) / 2.0
        untied_b = np.count_nonzero(sign_b, axis=(1, 2)) / 2.0
        del sign_a, sign_b
        denominator = np.sqrt(untied_a * untied_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            tau[part] = np.where(denominator > 0, s / denominator, np.nan)
    return np.clip(tau, -1.0, 1.0)


def top_k_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Marks the k largest entries of each row, ties broken by the lower index.

    Args:
        values: `[B, n]` array.
        k: 1 <= k <= n.

    Returns:
        bool `[B, n]` mask with exactly k True entries per row.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    mask = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def top_k_overlap_rows(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """`|topk(a) ∩ topk(b)| / k` for each row pair.

    Args:
        a: `[B, n]` array.
        b: `[B, n]` array.
        k: set size, 1 <= k <= n.

    Returns:
        float64 `[B]` overlaps in [0, 1].
    """
    both = top_k_mask(a, k) & top_k_mask(b, k)
    return both.sum(axis=-1) / float(k)


def _as_ks(k: int | Sequence[int]) -> tuple[int, ...]:
    return (int(k),) if np.isscalar(k) else tuple(int(v) for v in k)


def rank_agreement(
    logits_a: Any,
    logits_b: Any,
    labels: Any,
    k: int | Sequence[int] = (5, 10),
    chunk_size: int = 256,
) -> dict[str, float]:
    """How alike two teachers rank the non-target classes, averaged over samples.

    For each sample the label's column is dropped from both teachers' logits
    and the remaining C-1 classes are compared: Spearman's rho (Pearson
    correlation of average ranks), Kendall's tau-b (ties handled) and the
    top-k set overlap `|topk_a ∩ topk_b| / k` (ties at the k-th place broken
    by the lower class index). Samples where a teacher's non-target logits are
    all equal have no defined correlation and are left out of those two means.

    Args:
        logits_a: `[N, C]` logits (or probabilities) of the first teacher.
        logits_b: `[N, C]` logits (or probabilities) of the second teacher.
        labels: `[N]`, `[N, 1]` or one-hot labels.
        k: one set size or several, each in [1, C-1].
        chunk_size: samples per Kendall chunk (peak memory about
            `10 * chunk_size * (C-1)^2` bytes).

    Returns:
        Dict of floats: `spearman`, `kendall`, `overlap@k` for each k, and
        `num_samples`, `num_undefined` (samples left out of the correlations).

    Example:
        >>> import numpy as np
        >>> f = np.array([[5.0, 1.0, 2.0, 3.0]])
        >>> rank_agreement(f, f, np.array([0]), k=2)["spearman"]
        1.0
    """
    a = check_logits(logits_a, "logits_a")
    b = check_logits(logits_b, "logits_b")
    if a.shape != b.shape:
        raise ValueError(
            f"`logits_a` and `logits_b` must have the same shape; got {a.shape} and {b.shape}."
        )
    num_classes = a.shape[-1]
    labels = labels_per_row(labels, num_classes, a, "logits_a")
    if len(labels) == 0:
        raise ValueError("`logits_a` is empty: nothing to compare.")
    ks = _as_ks(k)
    for value in ks:
        if not 1 <= value <= num_classes - 1:
            raise ValueError(f"`k` must lie in [1, {num_classes - 1}]; got {value}.")
    a = non_target_columns(a.astype(np.float64), labels)
    b = non_target_columns(b.astype(np.float64), labels)
    rho = spearman_rows(a, b)
    tau = kendall_rows(a, b, chunk_size)
    undefined = np.isnan(rho) | np.isnan(tau)
    result = {
        "spearman": float(np.mean(rho[~undefined])) if (~undefined).any() else float("nan"),
        "kendall": float(np.mean(tau[~undefined])) if (~undefined).any() else float("nan"),
    }
    for value in ks:
        result[f"overlap@{value}"] = float(np.mean(top_k_overlap_rows(a, b, value)))
    result["num_samples"] = int(len(labels))
    result["num_undefined"] = int(undefined.sum())
    return result


def pairwise_agreement(
    logits: Mapping[str, Any],
    labels: Any,
    k: int | Sequence[int] = (5, 10),
    chunk_size: int = 256,
) -> dict[str, Any]:
    """Teacher-by-teacher matrices of `rank_agreement`.

    Args:
        logits: teacher name -> `[N, C]` logits, all on the same samples.
        labels: `[N]` labels.
        k: top-k set sizes.
        chunk_size: samples per Kendall chunk.

    Returns:
        Dict with `names` (the teacher order) and, for `spearman`, `kendall`
        and each `overlap@k`, a symmetric float64 `[T, T]` matrix (1 on the
        diagonal).
    """
    names = list(logits)
    metrics = ["spearman", "kendall"] + [f"overlap@{v}" for v in _as_ks(k)]
    matrices = {m: np.eye(len(names), dtype=np.float64) for m in metrics}
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            values = rank_agreement(logits[first], logits[names[j]], labels, k, chunk_size)
            for m in metrics:
                matrices[m][i, j] = matrices[m][j, i] = values[m]
    return {"names": names, **matrices}
