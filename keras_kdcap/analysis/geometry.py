"""Feature geometry: angles between penultimate features, class means and weights.

Computed in float64 NumPy. Angles use `2 * atan2(|u - v|, |u + v|)` on unit
vectors, which stays accurate for small angles where `arccos` of the cosine
loses half its digits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_kdcap.analysis._arrays import labels_per_row, to_numpy


def _unit(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit norm, and a mask of the rows with a non-zero norm."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    valid = norms[..., 0] > 0
    return vectors / np.where(norms > 0, norms, 1.0), valid


def angle_degrees(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle between paired rows of `u` and `v`, in degrees.

    Args:
        u: `[..., D]` vectors.
        v: `[..., D]` vectors (broadcast against `u`).

    Returns:
        float64 `[...]` angles in [0, 180]; NaN where either vector is zero.
    """
    u, valid_u = _unit(np.asarray(u, dtype=np.float64))
    v, valid_v = _unit(np.asarray(v, dtype=np.float64))
    angle = 2.0 * np.arctan2(np.linalg.norm(u - v, axis=-1), np.linalg.norm(u + v, axis=-1))
    return np.where(valid_u & valid_v, np.degrees(angle), np.nan)


def mean_pairwise_angle(vectors: np.ndarray) -> float:
    """Mean angle over all unordered pairs of distinct rows, in degrees.

    Args:
        vectors: `[M, D]` rows, M >= 2. Zero rows are left out.

    Returns:
        The mean angle; NaN if fewer than two non-zero rows.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    upper_i, upper_j = np.triu_indices(len(vectors), k=1)
    angles = angle_degrees(vectors[upper_i], vectors[upper_j])
    angles = angles[~np.isnan(angles)]
    return float(np.mean(angles)) if angles.size else float("nan")


def class_means(features: Any, labels: Any, num_classes: int | None = None):
    """Mean feature vector of each class present.

    Args:
        features: `[N, D]` features.
        labels: `[N]` integer labels.
        num_classes: class count; `max(labels) + 1` if None.

    Returns:
        `(means, present)`: float64 `[num_classes, D]` means (zero rows for absent
        classes) and a bool `[num_classes]` mask of the classes present.
    """
    features = to_numpy(features, np.float64)
    labels = to_numpy(labels).astype(np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    sums = np.zeros((num_classes, features.shape[-1]), dtype=np.float64)
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    means = sums / np.where(present, counts, 1.0)[:, None]
    return means, present


def feature_geometry(
    features: Any,
    labels: Any,
    classifier_kernel: Any = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Intra- and inter-class angles of penultimate features.

    - `intra_class_angle`: mean over samples of the angle between a sample's
      feature and the mean feature of its class.
    - `inter_class_angle`: mean over pairs of distinct classes (present in the
      data) of the angle between their class means.
    - `inter_class_weight_angle`: mean over pairs of classes of the angle
      between their classifier weight vectors (columns of the `[D, C]` Dense
      kernel; the bias is ignored), when `classifier_kernel` is given.

    Zero feature vectors (possible after a ReLU) have no direction and are left
    out of the means.

    Args:
        features: `[N, D]` penultimate features.
        labels: `[N]`, `[N, 1]` or one-hot labels.
        classifier_kernel: optional `[D, C]` kernel of the classifier.
        num_classes: class count C; taken from the kernel, else from the labels.

    Returns:
        Dict of floats (degrees): `intra_class_angle`, `inter_class_angle` and,
        with a kernel, `inter_class_weight_angle`.

    Example:
        >>> import numpy as np
        >>> f = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> round(feature_geometry(f, np.array([0, 0, 1, 1]))["inter_class_angle"])
        84
    """
    features = to_numpy(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape [N, D]; got {features.shape}.")
    kernel = None if classifier_kernel is None else to_numpy(classifier_kernel, np.float64)
    if kernel is not None:
        if kernel.ndim != 2 or kernel.shape[0] != features.shape[-1]:
            raise ValueError(
                f"`classifier_kernel` must have shape [D={features.shape[-1]}, C]; "
                f"got {kernel.shape}."
            )
        num_classes = kernel.shape[-1]
    if num_classes is None:
        raw = to_numpy(labels)
        num_classes = raw.shape[-1] if raw.ndim == 2 and raw.shape[-1] > 1 else int(raw.max()) + 1
    labels = labels_per_row(labels, num_classes, features, "features")
    means, present = class_means(features, labels, num_classes)
    intra = angle_degrees(features, means[labels])
    result = {
        "intra_class_angle": float(np.nanmean(intra)) if (~np.isnan(intra)).any() else float("nan"),
        "inter_class_angle": mean_pairwise_angle(means[present]),
    }
    if kernel is not None:
        result["inter_class_weight_angle"] = mean_pairwise_angle(kernel.T)
    return result
