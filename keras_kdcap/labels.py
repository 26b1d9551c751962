"""Labels as the Distiller reads them: class indices, one-hot or soft rows, or none.

* Class indices `[B]` or `[B, 1]`: the cross-entropy is the usual sparse one.
* `[B, C]` rows: one-hot rows give exactly the sparse cross-entropy of their
  class; any other row (MixUp/CutMix, label smoothing) is a soft target and
  the cross-entropy is `-sum_c y_c log softmax(g)_c`. A row must be finite,
  non-negative and sum to 1 (within 1e-3; 1e-2 for half-precision labels).
* No labels (only with `alpha == 0`): the teacher's top class stands in.

Policies that need a target class (ATS, ISATS, FGCR, DKD, SCKD) get the
label's class: the index, or the arg-max of the row (the dominant class of a
soft label; the first one on a tie).
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_kdcap import ops as kd_ops


class Labels(NamedTuple):
    """One batch's labels.

    Attributes:
        classes: int32 `[B]` target classes, clipped into `[0, C)`.
        targets: float32 `[B, C]` label rows (zero where invalid), or None
            for class-index labels.
        hard: bool `[B]`, True where the row is one-hot (None with `targets`).
        valid: bool `[B]`, False for an index outside `[0, C)` or a row that
            is not a probability vector.
    """

    classes: object
    targets: object
    hard: object
    valid: object


def _row_tolerance(dtype) -> float:
    return 1e-2 if str(dtype) in ("float16", "bfloat16") else 1e-3


def _from_rows(rows, classes, tolerance: float) -> Labels:
    """Labels of `[B, C]` rows whose arg-max is `classes`."""
    rows = kd_ops.as_float32(rows)
    finite = ops.isfinite(rows)
    safe = ops.where(finite, rows, 0.0)
    valid = ops.logical_and(
        ops.all(ops.logical_and(finite, safe >= 0.0), axis=-1),
        ops.abs(ops.sum(safe, axis=-1) - 1.0) <= tolerance,
    )
    hard = ops.logical_and(
        ops.all(ops.logical_or(safe == 0.0, safe == 1.0), axis=-1),
        ops.sum(safe, axis=-1) == 1.0,
    )
    targets = ops.where(ops.expand_dims(valid, -1), safe, 0.0)
    return Labels(classes, targets, hard, valid)


def read_labels(y, num_classes: int) -> Labels:
    """Reads `[B]`, `[B, 1]` class indices or `[B, C]` one-hot or soft rows.

    Args:
        y: the batch's labels.
        num_classes: the class count C (> 1).

    Returns:
        The `Labels` of the batch.
    """
    y = ops.convert_to_tensor(y)
    classes = kd_ops.sparse_labels(y, num_classes)
    in_range = ops.logical_and(classes >= 0, classes < num_classes)
    clipped = ops.clip(classes, 0, num_classes - 1)
    shape = y.shape
    rank = shape.rank if hasattr(shape, "rank") else len(shape)
    if rank is None:
        return _read_unknown_rank(y, clipped, in_range, num_classes)
    if rank == 2 and y.shape[-1] == num_classes and num_classes > 1:
        return _from_rows(y, clipped, _row_tolerance(y.dtype))
    return Labels(clipped, None, None, in_range)


def _read_unknown_rank(y, classes, in_range, num_classes: int) -> Labels:
    """`read_labels` for a TensorFlow tensor of unknown rank (see `kd_ops.sparse_labels`)."""
    import tensorflow as tf

    is_rows = tf.logical_and(tf.rank(y) == 2, tf.shape(y)[-1] == num_classes)
    rows = tf.cond(
        is_rows,
        lambda: tf.reshape(tf.cast(y, "float32"), (-1, num_classes)),
        lambda: tf.one_hot(classes, num_classes, dtype="float32"),
    )
    labels = _from_rows(rows, classes, _row_tolerance(y.dtype))
    return labels._replace(valid=tf.where(is_rows, labels.valid, in_range))


def teacher_labels(teacher_logits) -> Labels:
    """The teacher's top class as the label of every sample (unlabelled data).

    Args:
        teacher_logits: `[B, C]` teacher logits.

    Returns:
        `Labels` with `classes = argmax f` (first on a tie), all valid.
    """
    classes = ops.cast(ops.argmax(teacher_logits, axis=-1), "int32")
    return Labels(classes, None, None, ops.ones(ops.shape(classes), dtype="bool"))


def cross_entropy(labels: Labels, logits):
    """Per-sample cross-entropy of `softmax(logits)` against the labels, float32 `[B]`.

    One-hot rows and class indices use the sparse cross-entropy (the same
    numbers as before soft labels were read); other rows the soft one.

    Args:
        labels: the batch's `Labels`.
        logits: `[B, C]` student logits.

    Returns:
        float32 `[B]` losses.
    """
    logits = kd_ops.as_float32(logits)
    sparse = ops.sparse_categorical_crossentropy(labels.classes, logits, from_logits=True)
    if labels.targets is None:
        return sparse
    soft = -ops.sum(labels.targets * ops.log_softmax(logits, axis=-1), axis=-1)
    return ops.where(labels.hard, sparse, soft)


def missing_labels_message(alpha: float, argument: str = "x") -> str:
    """The error for data without labels when `alpha > 0`.

    Args:
        alpha: the weight of the cross-entropy.
        argument: the argument that brought no labels (`x`, `validation_data`).

    Returns:
        The message.
    """
    where = "The data" if argument == "x" else f"`{argument}`"
    return (
        f"{where} has no labels, and the Distiller needs labels when alpha > 0 (got "
        f"alpha={alpha:g}): pass `y` to fit/evaluate or a dataset of (x, y) pairs, or compile "
        "with `alpha=0` to distil from inputs alone (the teacher's top class then stands in "
        "for the label)."
    )
