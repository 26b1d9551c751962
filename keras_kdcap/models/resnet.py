"""CIFAR ResNets with basic blocks (He et al. 2016), in the CRD/RepDistiller layout.

Layout: 3x3 conv stem (``widths[0]`` channels) + BN + ReLU at full resolution, then three
stages of ``n = (depth - 2) // 6`` basic blocks with ``widths[1:]`` channels and strides
1/2/2, global average pooling and the ``"classifier"`` Dense. A block is
``conv3x3-BN-ReLU-conv3x3-BN`` plus a shortcut, then ReLU; the shortcut is a 1x1 conv + BN
("option B") whenever the stride or the channel count changes, the identity otherwise.

Feature dimension ``D = widths[-1]``: 64 for ``resnet8 ... resnet110`` (widths 16/16/32/64)
and 256 for ``resnet8x4`` / ``resnet32x4`` (widths 32/64/128/256).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from keras_kdcap.models._common import (
    batch_norm,
    bn_relu,
    conv2d,
    relu,
    stack_stages,
    zoo_model,
)

NARROW_WIDTHS = (16, 16, 32, 64)
WIDE_WIDTHS = (32, 64, 128, 256)


def _basic_block(x: Any, filters: int, strides: int, name: str, kernel_regularizer: Any) -> Any:
    """Post-activation basic block with an option-B (1x1 conv + BN) projection shortcut."""
    reg = kernel_regularizer
    out = conv2d(x, filters, 3, strides, name=f"{name}_conv1", kernel_regularizer=reg)
    out = bn_relu(out, f"{name}_bn1", f"{name}_relu1")
    out = conv2d(out, filters, 3, 1, name=f"{name}_conv2", kernel_regularizer=reg)
    out = batch_norm(out, name=f"{name}_bn2")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv2d(x, filters, 1, strides, name=f"{name}_down_conv", kernel_regularizer=reg)
        shortcut = batch_norm(shortcut, name=f"{name}_down_bn")
    else:
        shortcut = x
    out = layers.Add(name=f"{name}_add")([out, shortcut])
    return relu(out, name=f"{name}_out")


def build_resnet(
    depth: int,
    widths: Sequence[int] = NARROW_WIDTHS,
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    kernel_regularizer: Any = None,
    name: str | None = None,
) -> keras.Model:
    """Build a CIFAR ResNet of depth ``6n + 2`` with basic blocks.

    Args:
        depth: total depth, ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        widths: four channel counts: stem, stage 1, stage 2, stage 3.
        num_classes, input_shape, with_features, kernel_regularizer: as for
            :func:`~keras_kdcap.models.get_model`; the features have ``D = widths[-1]``.
        name: model name; ``resnet{depth}`` (``x4`` suffix for wide widths) if None.

    Returns:
        A functional ``keras.Model`` producing float32 logits.
    """
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4:
        raise ValueError(f"widths must have 4 entries (stem + 3 stages), got {widths}")
    if name is None:
        suffix = {NARROW_WIDTHS: "", WIDE_WIDTHS: "x4"}.get(widths, "_custom")
        name = f"resnet{depth}{suffix}"
    blocks_per_stage = (depth - 2) // 6

    def body(x: Any, reg: Any) -> Any:
        x = conv2d(x, widths[0], 3, 1, name="stem_conv", kernel_regularizer=reg)
        x = bn_relu(x, "stem_bn", "stem_relu")
        stages = [(w, blocks_per_stage, s) for w, s in zip(widths[1:], (1, 2, 2), strict=True)]
        return stack_stages(x, _basic_block, stages, kernel_regularizer=reg)

    return zoo_model(body, name, num_classes, input_shape, with_features, kernel_regularizer)
