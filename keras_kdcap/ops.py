"""Backend-agnostic numerics shared by the policies, losses and metrics.

Every function takes tensors and returns tensors, runs through `keras.ops`
only, and computes in float32 whatever the input dtype, so that a bfloat16
student never softmaxes at a small temperature in half precision.
The formulas are those of METHODS.md.
"""

from __future__ import annotations

from keras import ops

#: the capped target logit `f_y / tau1` is kept this factor above `m / tau2`,
#: so that the label stays strictly first after float32 rounding.
_CAP_MARGIN = 1.0 + 1e-3


def as_float32(x):
    """Converts a tensor (or array) to float32.

    Args:
        x: any tensor or array.

    Returns:
        The tensor in float32.
    """
    x = ops.convert_to_tensor(x)
    if x.dtype != "float32":
        x = ops.cast(x, "float32")
    return x


def _per_sample(temperature, batch_rank: int):
    """Shapes a scalar or `[B]` temperature so it broadcasts over `[B, C]`."""
    temperature = as_float32(temperature)
    if len(temperature.shape) == 1 and batch_rank == 2:
        temperature = ops.expand_dims(temperature, -1)
    return temperature


def sparse_labels(labels, num_classes: int):
    """Turns `[B]`, `[B, 1]` or `[B, C]` labels into int32 `[B]` target classes.

    A `[B, C]` row (one-hot, or soft as from MixUp) gives its arg-max, the
    first one on a tie; `keras_kdcap.labels` keeps the whole row for the
    cross-entropy.

    Args:
        labels: integer class indices or one-hot or soft rows.
        num_classes: the class count C, used to recognise one-hot labels.

    Returns:
        int32 tensor of shape `[B]`.
    """
    labels = ops.convert_to_tensor(labels)
    if labels.shape is None or getattr(labels.shape, "rank", 0) is None:
        return _sparse_labels_unknown_rank(labels, num_classes)
    if len(labels.shape) == 2 and labels.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(ops.argmax(labels, axis=-1), "int32")
    if len(labels.shape) == 2 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    if len(labels.shape) != 1:
        raise ValueError(
            f"`labels` must have shape [B], [B, 1] or one-hot [B, {num_classes}]; "
            f"got shape {tuple(labels.shape)}."
        )
    return ops.cast(labels, "int32")


def _sparse_labels_unknown_rank(labels, num_classes: int):
    """`sparse_labels` for a tensor of unknown rank.

    Only TensorFlow builds these (a `tf.function` retraced with relaxed
    shapes, e.g. after labels of another layout), so this uses `tf` directly.
    """
    import tensorflow as tf

    one_hot = tf.logical_and(tf.rank(labels) == 2, tf.shape(labels)[-1] == num_classes)
    one_hot = tf.logical_and(one_hot, num_classes > 1)
    per_sample = tf.where(one_hot, num_classes, 1)
    flat = tf.reshape(labels, (tf.size(labels) // per_sample, per_sample))
    sparse = tf.where(one_hot, tf.argmax(flat, axis=-1, output_type=tf.int32), 0)
    return tf.where(one_hot, sparse, tf.cast(flat[:, 0], tf.int32))


def target_mask(labels, num_classes: int, dtype: str = "float32"):
    """One-hot mask of the target class.

    Args:
        labels: int `[B]` labels.
        num_classes: the class count C.
        dtype: dtype of the mask.

    Returns:
        `[B, C]` tensor, 1 at the label and 0 elsewhere.
    """
    # a comparison, not ops.one_hot: torch's one_hot reads values back to the
    # host (a device sync per call on a GPU).
    mask = ops.expand_dims(labels, -1) == ops.arange(num_classes, dtype=labels.dtype)
    return mask if dtype == "bool" else ops.cast(mask, dtype)


def tempered_softmax(logits, temperature):
    """`softmax(logits / temperature)` in float32.

    Args:
        logits: `[B, C]` logits.
        temperature: positive scalar or `[B]` per-sample temperatures.

    Returns:
        `[B, C]` probabilities.
    """
    logits = as_float32(logits)
    return ops.softmax(logits / _per_sample(temperature, len(logits.shape)), axis=-1)


def tempered_log_softmax(logits, temperature):
    """`log_softmax(logits / temperature)` in float32.

    Args:
        logits: `[B, C]` logits.
        temperature: positive scalar or `[B]` per-sample temperatures.

    Returns:
        `[B, C]` log-probabilities.
    """
    logits = as_float32(logits)
    return ops.log_softmax(logits / _per_sample(temperature, len(logits.shape)), axis=-1)


def asymmetric_logits(logits, labels, target_temperature, other_temperature):
    """Teacher logits divided by `tau1` at the label and `tau2` elsewhere.

    Args:
        logits: `[B, C]` logits.
        labels: int `[B]` labels.
        target_temperature: `tau1`, scalar or `[B]`.
        other_temperature: `tau2`, scalar or `[B]`.

    Returns:
        `[B, C]` scaled logits.
    """
    logits = as_float32(logits)
    mask = target_mask(labels, logits.shape[-1], dtype="bool")
    rank = len(logits.shape)
    return ops.where(
        mask,
        logits / _per_sample(target_temperature, rank),
        logits / _per_sample(other_temperature, rank),
    )


def asymmetric_softmax(logits, labels, target_temperature, other_temperature):
    """ATS: one softmax with `tau1` on the target class and `tau2` on the rest.

    Args:
        logits: `[B, C]` teacher logits.
        labels: int `[B]` labels.
        target_temperature: `tau1`, scalar or `[B]`.
        other_temperature: `tau2`, scalar or `[B]`.

    Returns:
        `[B, C]` probabilities (rows sum to 1).
    """
    scaled = asymmetric_logits(logits, labels, target_temperature, other_temperature)
    return ops.softmax(scaled, axis=-1)


def non_target_variance(probs, labels):
    """Population variance of the C-1 non-target entries (not renormalised).

    Args:
        probs: `[..., C]` probabilities (any leading shape, e.g. `[B, C]` or
            `[B, K, C]`).
        labels: int `[B]` labels; the target is masked out of every row of
            the sample.

    Returns:
        Tensor of the leading shape of `probs` without the class axis.
    """
    probs = as_float32(probs)
    num_classes = probs.shape[-1]
    mask = 1.0 - target_mask(labels, num_classes)
    for _ in range(len(probs.shape) - 2):
        mask = ops.expand_dims(mask, 1)
    count = float(num_classes - 1)
    mean = ops.sum(probs * mask, axis=-1, keepdims=True) / count
    centred = (probs - mean) * mask
    return ops.sum(centred * centred, axis=-1) / count


def keep_target_first(logits, labels, target_temperature, other_temperature):
    """Caps `tau1` per sample so the label stays ranked first under ATS.

    Raising the target's temperature above the others keeps the label first
    only while `f_y / tau1 >= max_{c != y} f_c / tau2`. Where the teacher
    ranks the label first and `m = max_{c != y} f_c > 0`, this holds iff
    `tau1 <= tau2 * f_y / m`; the cap is `tau2 * f_y / (1.001 m)`, a 0.1%
    margin that keeps the label strictly first after float32 rounding.
    Elsewhere `tau1` is left as it is.

    Args:
        logits: `[B, C]` teacher logits.
        labels: int `[B]` labels.
        target_temperature: requested `tau1`, `[B]`.
        other_temperature: `tau2`, `[B]`.

    Returns:
        `(tau1, capped)`: the possibly lowered `[B]` target temperatures and a
        float32 `[B]` flag, 1 where the cap was applied.
    """
    logits = as_float32(logits)
    target_temperature = as_float32(target_temperature)
    other_temperature = as_float32(other_temperature)
    target = target_logit(logits, labels)
    other_max = max_non_target_logit(logits, labels)
    ranked_first = target >= other_max
    positive = other_max > 0.0
    bound = other_temperature * target / (ops.where(positive, other_max, 1.0) * _CAP_MARGIN)
    needs_cap = ops.logical_and(ops.logical_and(ranked_first, positive), target_temperature > bound)
    return ops.where(needs_cap, bound, target_temperature), ops.cast(needs_cap, "float32")


def target_logit(logits, labels):
    """The logit of the label, `[B]`."""
    mask = target_mask(labels, logits.shape[-1])
    return ops.sum(as_float32(logits) * mask, axis=-1)


def max_non_target_logit(logits, labels):
    """The largest logit among the non-target classes, `[B]`."""
    logits = as_float32(logits)
    mask = target_mask(labels, logits.shape[-1], dtype="bool")
    return ops.max(ops.where(mask, -float("inf"), logits), axis=-1)


def label_ranked_first(probs, labels):
    """1.0 where the label has the largest entry of the row (ties count), else 0.

    Args:
        probs: `[B, C]` probabilities or logits.
        labels: int `[B]` labels.

    Returns:
        float32 `[B]` flags.
    """
    return ops.cast(target_logit(probs, labels) >= max_non_target_logit(probs, labels), "float32")


def __getattr__(name: str):
    """The ISATS search moved to `keras_kdcap.policies.isats` (deprecated aliases)."""
    if name in ("isats_temperature", "temperature_grid"):
        import warnings

        from keras_kdcap.policies import isats

        warnings.warn(
            f"keras_kdcap.ops.{name} moved to keras_kdcap.policies.isats.{name}; "
            "the old path goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(isats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
