"""PyTorch-style (coupled) weight decay for Keras models, as an L2 penalty on their variables.

PyTorch's ``SGD(weight_decay=wd)`` adds ``wd * w`` to every parameter's gradient before
momentum, so with momentum 0.9 the decay is amplified about tenfold. Keras's
``SGD(weight_decay=...)`` decays the weights directly (decoupled) and is therefore about
ten times weaker at the same number. An L2 penalty ``wd / 2 * sum(w ** 2)`` has gradient
``wd * w`` and goes through momentum: the PyTorch behaviour.
"""

from __future__ import annotations

import logging

import keras

logger = logging.getLogger(__name__)

_SCOPES = ("all", "kernels")


def _is_kernel(variable: keras.Variable) -> bool:
    name = variable.path.split("/")[-1]
    return name in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")


def apply_weight_decay(model: keras.Model, weight_decay: float, scope: str = "all") -> int:
    """Attach ``L2(weight_decay / 2)`` to the trainable variables of a built model.

    Keras adds each variable's ``regularizer`` to ``model.losses``, hence to the training
    loss, on every backend. Calling this again replaces the penalty (no double counting),
    also one set through a layer's ``kernel_regularizer``.

    Args:
        model: a built model.
        weight_decay: PyTorch's ``weight_decay`` (5e-4 in the CRD recipe); 0 removes
            the penalty from the variables in ``scope``.
        scope: ``"all"`` (every trainable variable, biases and BatchNorm scales
            included, as ``torch.optim.SGD(model.parameters(), ...)``) or ``"kernels"``.

    Returns:
        The number of variables that now carry the penalty.
    """
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not model.built:
        raise ValueError("build the model (call it once or give it an Input) before this")
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None
    count = replaced = 0
    for variable in model.trainable_variables:
        if scope == "kernels" and not _is_kernel(variable):
            continue
        if variable.regularizer is not None:
            replaced += 1
        variable.regularizer = regularizer
        count += regularizer is not None
    if replaced:
        logger.info("apply_weight_decay replaced the regularizer of %d variables", replaced)
    return count
