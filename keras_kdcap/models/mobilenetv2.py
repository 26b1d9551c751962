"""CIFAR MobileNetV2 (Sandler et al. 2018) as RepDistiller's ``mobile_half``.

Layout: 3x3 stride-2 conv stem with ``int(32 * w)`` channels, seven stages of inverted
residuals ``(t, c, n, s)`` = (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2),
(T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1) with ``int(c * w)`` output channels, a 1x1
conv to 1280 channels (``int(1280 * w)`` when ``w > 1``), global average pooling and the
``"classifier"`` Dense. Every inverted residual keeps its 1x1 expansion conv, even with
``t = 1`` (as the reference does); the residual is used when the stride is 1 and the width
is unchanged. A 32x32 image ends at 2x2 before pooling.

``mobilenetv2`` in the zoo is ``T = 6, w = 0.5``; feature dimension ``D = 1280``.
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
    depthwise_conv2d,
    stack_stages,
    zoo_model,
)


def _stage_settings(expansion: int) -> tuple[tuple[int, int, int, int], ...]:
    """The ``(t, c, n, s)`` rows of the inverted-residual stages."""
    t = expansion
    return (
        (1, 16, 1, 1),
        (t, 24, 2, 1),
        (t, 32, 3, 2),
        (t, 64, 4, 2),
        (t, 96, 3, 1),
        (t, 160, 3, 2),
        (t, 320, 1, 1),
    )


def _inverted_residual(
    x: Any, filters: int, strides: int, expansion: int, name: str, kernel_regularizer: Any
) -> Any:
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear), residual when shapes match."""
    in_channels = x.shape[-1]
    hidden = in_channels * expansion
    out = conv2d(x, hidden, 1, name=f"{name}_expand", kernel_regularizer=kernel_regularizer)
    out = bn_relu(out, f"{name}_expand_bn", f"{name}_expand_relu")
    out = depthwise_conv2d(out, strides, name=f"{name}_dw", kernel_regularizer=kernel_regularizer)
    out = bn_relu(out, f"{name}_dw_bn", f"{name}_dw_relu")
    out = conv2d(out, filters, 1, name=f"{name}_project", kernel_regularizer=kernel_regularizer)
    out = batch_norm(out, name=f"{name}_project_bn")
    if strides == 1 and in_channels == filters:
        out = layers.Add(name=f"{name}_add")([x, out])
    return out


def build_mobilenetv2(
    width_mult: float = 0.5,
    expansion: int = 6,
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    kernel_regularizer: Any = None,
    name: str | None = None,
) -> keras.Model:
    """Build a CIFAR MobileNetV2 with width multiplier ``width_mult`` and expansion ``T``.

    Args:
        width_mult: channel multiplier ``w`` (0.5 for RepDistiller's ``mobile_half``).
        expansion: expansion ratio ``T`` of every stage but the first.
        num_classes, input_shape, with_features, kernel_regularizer: as for
            :func:`~keras_kdcap.models.get_model`; the features have ``D = 1280``
            (``int(1280 * w)`` when ``w > 1``).
        name: model name; ``mobilenetv2`` for the default configuration if None.

    Returns:
        A functional ``keras.Model`` producing float32 logits.
    """
    if width_mult <= 0 or expansion < 1:
        raise ValueError(f"need width_mult > 0 and expansion >= 1, got {width_mult}, {expansion}")
    if name is None:
        default = width_mult == 0.5 and expansion == 6
        name = "mobilenetv2" if default else f"mobilenetv2_t{expansion}_w{width_mult:g}"
    last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
    stages = [(int(c * width_mult), n, s, t) for t, c, n, s in _stage_settings(expansion)]

    def body(x: Any, reg: Any) -> Any:
        x = conv2d(x, int(32 * width_mult), 3, 2, name="stem_conv", kernel_regularizer=reg)
        x = bn_relu(x, "stem_bn", "stem_relu")
        x = stack_stages(x, _inverted_residual, stages, kernel_regularizer=reg)
        x = conv2d(x, last_channels, 1, name="head_conv", kernel_regularizer=reg)
        return bn_relu(x, "head_bn", "head_relu")

    # The reference draws the classifier kernel from N(0, 0.01): classifier_stddev=0.01.
    return zoo_model(body, name, num_classes, input_shape, with_features, kernel_regularizer, 0.01)
