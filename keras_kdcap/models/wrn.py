"""Pre-activation wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), RepDistiller layout.

Layout: 3x3 conv stem (16 channels, no BN), three stages of ``n = (depth - 4) // 6``
pre-activation blocks with ``16k / 32k / 64k`` channels and strides 1/2/2, then
BN + ReLU, global average pooling and the ``"classifier"`` Dense. A block is
``BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3``; when its input and output widths differ the
shortcut is a bias-free 1x1 conv applied to the *activated* input (as in the reference),
otherwise the identity on the raw input.

Feature dimension ``D = 64k``: 64 for ``wrn_16_1`` / ``wrn_40_1``, 128 for ``wrn_16_2`` /
``wrn_40_2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from keras_kdcap.models._common import bn_relu, conv2d, stack_stages, zoo_model


def _wide_block(
    x: Any, filters: int, strides: int, dropout_rate: float, name: str, kernel_regularizer: Any
) -> Any:
    """Pre-activation basic block; 1x1 conv shortcut when the width changes."""
    equal_in_out = x.shape[-1] == filters
    reg = kernel_regularizer
    act = bn_relu(x, f"{name}_bn1", f"{name}_relu1")
    out = conv2d(act, filters, 3, strides, name=f"{name}_conv1", kernel_regularizer=reg)
    out = bn_relu(out, f"{name}_bn2", f"{name}_relu2")
    if dropout_rate > 0:
        out = layers.Dropout(dropout_rate, name=f"{name}_dropout")(out)
    out = conv2d(out, filters, 3, 1, name=f"{name}_conv2", kernel_regularizer=reg)
    if equal_in_out:
        if strides != 1:
            raise ValueError("a strided wide-ResNet block must change the width")
        shortcut = x
    else:
        shortcut = conv2d(
            act, filters, 1, strides, name=f"{name}_short_conv", kernel_regularizer=reg
        )
    return layers.Add(name=f"{name}_add")([out, shortcut])


def build_wide_resnet(
    depth: int,
    widen_factor: int,
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    kernel_regularizer: Any = None,
    dropout_rate: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """Build a pre-activation wide ResNet WRN-``depth``-``widen_factor``.

    Args:
        depth: total depth, ``6n + 4`` (16, 22, 28, 40, ...).
        widen_factor: width multiplier ``k`` (stage widths ``16k, 32k, 64k``).
        num_classes, input_shape, with_features, kernel_regularizer: as for
            :func:`~keras_kdcap.models.get_model`; the features have ``D = 64k``.
        dropout_rate: dropout between the two convs of each block (0 in the CRD protocol).
        name: model name; ``wrn_{depth}_{widen_factor}`` if None.

    Returns:
        A functional ``keras.Model`` producing float32 logits.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
    if widen_factor < 1:
        raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
    name = name or f"wrn_{depth}_{widen_factor}"
    blocks_per_stage = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    stages = [
        (w, blocks_per_stage, s, dropout_rate) for w, s in zip(widths, (1, 2, 2), strict=True)
    ]

    def body(x: Any, reg: Any) -> Any:
        x = conv2d(x, 16, 3, 1, name="stem_conv", kernel_regularizer=reg)
        x = stack_stages(x, _wide_block, stages, kernel_regularizer=reg)
        return bn_relu(x, "final_bn", "final_relu")

    return zoo_model(body, name, num_classes, input_shape, with_features, kernel_regularizer)
