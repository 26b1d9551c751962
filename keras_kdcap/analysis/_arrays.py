"""Turning numpy arrays and backend tensors into numpy, for the analysis metrics."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """Converts a numpy array or a TensorFlow, JAX or torch tensor to numpy.

    Works whatever the active Keras backend is (a torch tensor that requires
    grad is detached first), so logits collected under one backend can be
    analysed under another.

    Args:
        x: array-like or tensor.
        dtype: optional numpy dtype of the result.

    Returns:
        A numpy array.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):  # torch.Tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16 of its own
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def labels_to_numpy(labels: Any, num_classes: int) -> np.ndarray:
    """Turns `[B]`, `[B, 1]` or one-hot `[B, C]` labels into int64 `[B]`.

    Args:
        labels: integer labels or one-hot rows, any array or tensor.
        num_classes: the class count C.

    Returns:
        int64 numpy array of shape `[B]`.

    Raises:
        ValueError: if the shape is not one of the above or a label is out of
            `[0, num_classes)`.
    """
    labels = to_numpy(labels)
    if labels.ndim == 2 and labels.shape[-1] == num_classes and num_classes > 1:
        labels = labels.argmax(axis=-1)
    elif labels.ndim == 2 and labels.shape[-1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`labels` must have shape [B], [B, 1] or one-hot [B, {num_classes}]; "
            f"got shape {labels.shape}."
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}); got values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    return labels


def labels_per_row(labels: Any, num_classes: int, rows: np.ndarray, name: str) -> np.ndarray:
    """`labels_to_numpy(labels, num_classes)`, checked to hold one label per row of `rows`.

    The error message calls `rows` by its argument name, `name`.
    """
    labels = labels_to_numpy(labels, num_classes)
    if len(labels) != len(rows):
        raise ValueError(
            f"`{name}` and `labels` must have the same length; got {len(rows)} and {len(labels)}."
        )
    return labels


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """Converts `[B, C]` logits to numpy and checks their shape.

    Args:
        logits: `[B, C]` array or tensor with C >= 2.
        name: argument name used in the error message.

    Returns:
        The logits as a numpy array (dtype kept).

    Raises:
        ValueError: if the rank is not 2 or C < 2.
    """
    logits = to_numpy(logits)
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise ValueError(f"`{name}` must have shape [B, C] with C >= 2; got {logits.shape}.")
    return logits


def non_target_columns(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Drops the label's column from every row: `[B, C]` -> `[B, C-1]`.

    The remaining classes keep their order.

    Args:
        values: `[B, C]` array.
        labels: int `[B]` labels.

    Returns:
        `[B, C-1]` array.
    """
    b, c = values.shape
    keep = np.arange(c)[None, :] != labels[:, None]
    return values[keep].reshape(b, c - 1)
