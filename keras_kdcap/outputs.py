"""The teacher's and student's outputs: one `[batch, classes]` tensor of logits.

Or one `[batch, tokens, classes]` tensor for token-level distillation
(keras_kdcap.sequence). Checked when the Distiller is built (from the
models' output shapes, when known) and on the first batch of
`fit`/`evaluate` (the values): a model whose output is not one rank-2 or
rank-3 tensor (a backbone's `[B, H, W, C]` feature map, a dict or tuple of
outputs) is refused, and so is one whose rows are non-negative and sum to 1
(a final softmax), unless the teacher is declared with
`teacher_outputs="probabilities"`. A rank-3 output is taken as token logits:
with labels, they must be one per token (`[B, T]` or `[B, T, C]`), so a
sequence backbone's `[B, T, D]` features meet per-sample labels and are
refused on the first batch (`sequence.check_labels`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_kdcap import ops as kd_ops

#: what a teacher may give: logits (default) or probabilities (converted with a log).
OUTPUT_KINDS = ("logits", "probabilities")

_EXPECTED = (
    "the Distiller needs one [batch, classes] tensor of logits (or [batch, tokens, classes] "
    "for token-level distillation). Pass the classifier (a "
    "backbone needs a pooling layer and a `Dense(num_classes)` head), not a backbone or "
    "feature extractor, and wrap a model with several outputs so that it returns only "
    "the class logits."
)


def check_output_kind(name: str, value: str) -> str:
    """Returns `value` if it is one of `OUTPUT_KINDS`, else raises naming `name`."""
    if value not in OUTPUT_KINDS:
        raise ValueError(f"`{name}` must be one of {OUTPUT_KINDS}; got {value!r}.")
    return value


def _shape(tensor) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def describe(outputs) -> str:
    """A short description of an output structure, e.g. `a tensor of shape (8, 4, 4, 16)`."""
    if isinstance(outputs, dict):
        items = ", ".join(f"'{key}': {describe(value)}" for key, value in outputs.items())
        return f"a dict {{{items}}}"
    if isinstance(outputs, (list, tuple)):
        items = ", ".join(describe(value) for value in outputs)
        return f"a {type(outputs).__name__} of {len(outputs)} outputs ({items})"
    if hasattr(outputs, "shape"):
        return f"a tensor of shape {_shape(outputs)}"
    return f"a {type(outputs).__name__}"


def _who(role: str, model) -> str:
    return f"`{role}` (model '{getattr(model, 'name', type(model).__name__)}')"


def check_structure(role: str, model, outputs) -> None:
    """Raises unless `outputs` is one rank-2 (`[B, C]`) or rank-3 (`[B, T, C]`) tensor.

    Args:
        role: "teacher" or "student", used in the message.
        model: the model, named in the message.
        outputs: its outputs (tensors or `KerasTensor`s).
    """
    if keras.tree.is_nested(outputs) or not hasattr(outputs, "shape"):
        raise ValueError(f"{_who(role, model)} outputs {describe(outputs)}: {_EXPECTED}")
    if len(outputs.shape) not in (2, 3):
        raise ValueError(f"{_who(role, model)} outputs {describe(outputs)}: {_EXPECTED}")


def check_model(role: str, model) -> None:
    """`check_structure` on a model's symbolic output, when the model has one.

    Functional and Sequential models know their outputs when built; a
    subclassed model is checked on the first batch instead.
    """
    try:
        outputs = model.output
    except (AttributeError, ValueError, RuntimeError):
        return
    if outputs is not None:
        check_structure(role, model, outputs)


def _tolerance(dtype) -> float:
    return 1e-2 if str(dtype) in ("float16", "bfloat16") else 1e-3


def _are_probabilities(values: np.ndarray, tolerance: float) -> bool:
    """Whether every row is non-negative and sums to 1."""
    finite = values[np.all(np.isfinite(values), axis=-1)]
    if finite.size == 0:
        return False
    return bool(np.all(finite >= 0) and np.all(np.abs(finite.sum(axis=-1) - 1.0) <= tolerance))


def check_values(role: str, model, outputs, kind: str = "logits") -> None:
    """Raises if the outputs are probabilities and not declared so (or the reverse).

    Args:
        role: "teacher" or "student".
        model: the model, named in the message.
        outputs: its `[B, C]` outputs on one batch.
        kind: what the user declared, one of `OUTPUT_KINDS`.
    """
    check_structure(role, model, outputs)
    dtype = keras.backend.standardize_dtype(outputs.dtype)
    values = np.asarray(ops.convert_to_numpy(ops.cast(outputs, "float32")), dtype=np.float64)
    probabilities = _are_probabilities(values, _tolerance(dtype))
    who = _who(role, model)
    if kind == "logits" and probabilities:
        fix = (
            "remove the final softmax (`activation=None` in the last layer, or drop a final "
            "`Softmax` layer)"
        )
        if role == "teacher":
            fix += ', or declare them with `Distiller(..., teacher_outputs="probabilities")`'
        else:
            fix += "; add the softmax back to the student after distillation if needed"
        raise ValueError(
            f"{who} outputs probabilities (every row is non-negative and sums to 1), but the "
            f"Distiller needs logits: {fix}."
        )
    if kind == "probabilities" and not probabilities:
        raise ValueError(
            f'{who} was declared with `{role}_outputs="probabilities"`, but its rows are not '
            "probability vectors (non-negative, summing to 1): if it gives logits, leave "
            f'`{role}_outputs="logits"` (the default).'
        )
    if kind == "probabilities" and np.any(values == 0):
        raise ValueError(
            f"{who} gave a probability of exactly 0 (its softmax underflowed): the logit of "
            "that class is lost (its log is -inf). Remove the final softmax (`activation=None`"
            ' in the last layer) and drop `teacher_outputs="probabilities"`.'
        )


def as_logits(outputs, kind: str = "logits"):
    """The outputs as float32 logits: `log p` for probabilities (-inf where `p == 0`).

    `log p` equals the logits up to a constant per row, so every softmax of
    them (at any temperature) is exact.

    Args:
        outputs: `[B, C]` logits or probabilities.
        kind: one of `OUTPUT_KINDS`.

    Returns:
        float32 `[B, C]` logits.
    """
    outputs = kd_ops.as_float32(outputs)
    if kind != "probabilities":
        return outputs
    # `maximum` (the identity on probabilities) keeps TensorFlow's graph optimiser from
    # fusing log(softmax) into a log-softmax, which would accept exact zeros on that
    # backend only: a zero gives -inf, and is refused, on every backend.
    return ops.log(ops.maximum(outputs, 0.0))
