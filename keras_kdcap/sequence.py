"""Token-level distillation: `[B, T, C]` logits read as `B * T` rows with a token mask.

Every policy applies per token: the teacher's and student's `[B, T, C]`
logits become `[B * T, C]` rows, the labels `[B * T]` class indices (from
`[B, T]` or `[B, T, 1]`) or `[B * T, C]` label rows (soft or one-hot, from
`[B, T, C]`), and the `[B, C]` path of the Distiller runs on them unchanged.

The token mask is the product of `sample_weight` (`[B, T]`, or `[B]` for a
weight per sequence) and a KerasHub-style `padding_mask` entry of dict
inputs (`[B, T]`, true for real tokens), whichever are given. A token counts
where that product is non-zero; the CE and KD terms are
`sum(weight * loss) / (number of tokens that count)`: with a 0/1 mask, the
mean over the valid tokens. Masked tokens contribute nothing, whatever
their labels (-100 included), and a batch without a valid token gives 0.
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_kdcap import ops as kd_ops

#: the dict-input entry that marks real tokens (KerasHub's preprocessors and backbones).
PADDING_MASK = "padding_mask"


class Tokens(NamedTuple):
    """One batch's tokens as rows.

    Attributes:
        student_logits: float32 `[N, C]`, `N = B * T`.
        teacher_logits: float32 `[N, C]`.
        labels: the labels as `[N]`, `[N, C]` (or unknown-rank TF) rows, or None.
        weights: float32 `[N]` token weights (`sample_weight * padding_mask`),
            or None when neither is given.
        mask: float32 `[N]`, 1 for the tokens that count, 0 for masked ones.
        count: float32 scalar, the number of tokens that count.
    """

    student_logits: object
    teacher_logits: object
    labels: object
    weights: object
    mask: object
    count: object


def _rank(tensor) -> int | None:
    shape = tensor.shape
    if shape is None:
        return None
    rank = shape.rank if hasattr(shape, "rank") else len(shape)
    return rank


def _shape(tensor) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def padding_mask(x):
    """The `padding_mask` entry of dict inputs, else None."""
    if isinstance(x, dict):
        return x.get(PADDING_MASK)
    return None


def check_logits(student_logits, teacher_logits) -> None:
    """Raises unless the student's and teacher's logits have the same rank and tokens.

    Args:
        student_logits: `[B, C]` or `[B, T, C]` student logits.
        teacher_logits: the teacher's, of the same layout.
    """
    student_rank, teacher_rank = _rank(student_logits), _rank(teacher_logits)
    if student_rank != teacher_rank:
        raise ValueError(
            f"`teacher` gives logits of shape {_shape(teacher_logits)} but `student` gives "
            f"{_shape(student_logits)}: both must give [batch, classes] logits, or both "
            "[batch, tokens, classes] (token-level distillation)."
        )
    if student_rank == 3:
        tokens = (student_logits.shape[1], teacher_logits.shape[1])
        if None not in tokens and tokens[0] != tokens[1]:
            raise ValueError(
                f"`teacher` gives {tokens[1]} tokens per sequence but `student` gives "
                f"{tokens[0]}: both must score the same tokens."
            )


def check_labels(labels, logits, argument: str = "y") -> None:
    """Raises unless `labels` fit `[B, T, C]` logits: `[B, T]`, `[B, T, 1]` or `[B, T, C]`.

    Per-sample labels (`[B]`, or `[B, C]` rows) with `[B, T, C]` outputs are
    refused: the model then gives a sequence of features (a backbone), not
    one prediction per sample.

    Args:
        labels: the batch's labels (a tensor or array), or None.
        logits: the `[B, T, C]` outputs.
        argument: the argument named in the message.
    """
    if labels is None or _rank(labels) is None:
        return
    shape, num_classes = _shape(labels), logits.shape[-1]
    tokens = logits.shape[1]
    layout_ok = len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, num_classes, None))
    if layout_ok and None not in (shape[1], tokens) and shape[1] != tokens:
        raise ValueError(
            f"`{argument}` has labels for {shape[1]} tokens per sequence (shape {shape}) but "
            f"the models give logits for {tokens} (shape {_shape(logits)}): they must match."
        )
    if layout_ok:
        return
    raise ValueError(
        f"The models give [batch, tokens, classes] logits (shape {_shape(logits)}), so "
        f"`{argument}` must hold a label per token: class indices [B, T] (or [B, T, 1]) or "
        f"label rows [B, T, {num_classes}]; got shape {shape}. If the labels are one per "
        "sample, the model gives a sequence of features (a backbone): pool them and add a "
        "`Dense(num_classes)` head."
    )


def _per_token(values, batch, tokens_shape, tokens: int | None, argument: str):
    """`[B]`, `[B, 1]`, `[B, T]` or `[B, T, 1]` values as float32 `[B, T]`."""
    if _rank(values) is not None:
        shape = _shape(values)
        second = shape[1] if len(shape) > 1 else 1
        third = shape[2] if len(shape) > 2 else 1
        if len(shape) > 3 or second not in (1, tokens, None) or third not in (1, None):
            raise ValueError(
                f"`{argument}` must be [B, T] (one value per token) or [B] (one per sequence) "
                f"for [B, T, C] logits of {tokens} tokens; got shape {shape}."
            )
    values = ops.reshape(kd_ops.as_float32(values), (batch, -1))
    return values * ops.ones(tokens_shape, dtype="float32")


def _flatten_labels(y, batch_tokens):
    """`[B, T]`, `[B, T, 1]` or `[B, T, C]` labels as `[N]` or `[N, C]`."""
    rank = _rank(y)
    if rank is None:  # TensorFlow retraced with relaxed shapes: keep the rank unknown
        import tensorflow as tf

        return tf.reshape(y, tf.concat([[batch_tokens], tf.shape(y)[2:]], axis=0))
    if rank == 2 or (rank == 3 and y.shape[-1] == 1):
        return ops.reshape(y, (batch_tokens,))
    return ops.reshape(y, (batch_tokens, y.shape[-1]))


def flatten_tokens(student_logits, teacher_logits, y, sample_weight, mask) -> Tokens:
    """The batch's tokens as `[B * T]` rows, with their weights and mask.

    Args:
        student_logits: float32 `[B, T, C]` student logits.
        teacher_logits: float32 `[B, T, C]` teacher logits.
        y: `[B, T]`, `[B, T, 1]` or `[B, T, C]` labels, or None.
        sample_weight: `[B, T]` token weights or `[B]` sequence weights, or None.
        mask: a `[B, T]` padding mask (true/1 for real tokens), or None.

    Returns:
        The `Tokens` of the batch.
    """
    check_logits(student_logits, teacher_logits)
    check_labels(y, student_logits)
    num_classes = student_logits.shape[-1]
    batch = ops.shape(student_logits)[0]
    tokens = student_logits.shape[1]
    tokens_shape = (batch, ops.shape(student_logits)[1])
    batch_tokens = batch * tokens_shape[1]
    weights = None
    if sample_weight is not None:
        weights = _per_token(sample_weight, batch, tokens_shape, tokens, "sample_weight")
    if mask is not None:
        if _rank(mask) is not None and _rank(mask) != 2:
            raise ValueError(
                f"`{PADDING_MASK}` must be [B, T] (true for real tokens); got shape {_shape(mask)}."
            )
        mask = _per_token(ops.cast(mask, "float32"), batch, tokens_shape, tokens, PADDING_MASK)
        weights = mask if weights is None else weights * mask
    if weights is None:
        token_mask = ops.ones((batch_tokens,), dtype="float32")
    else:
        weights = ops.reshape(weights, (batch_tokens,))
        token_mask = ops.cast(weights != 0.0, "float32")
    return Tokens(
        student_logits=ops.reshape(student_logits, (batch_tokens, num_classes)),
        teacher_logits=ops.reshape(teacher_logits, (batch_tokens, num_classes)),
        labels=None if y is None else _flatten_labels(ops.convert_to_tensor(y), batch_tokens),
        weights=weights,
        mask=token_mask,
        count=ops.sum(token_mask),
    )
