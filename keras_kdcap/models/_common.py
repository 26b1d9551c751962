"""Shared layers and helpers for the CIFAR model zoo (PyTorch-equivalent defaults).

Every convolution here follows the PyTorch references of the CRD/RepDistiller protocol:
He-normal initialisation with fan-out, no bias unless stated, symmetric zero padding of
``k // 2`` on strided convolutions (Keras ``"same"`` padding pads asymmetrically when the
stride is 2), and BatchNorm with PyTorch's statistics (``momentum=0.9`` in Keras terms,
``epsilon=1e-5``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="keras_kdcap")
class HostVarianceScaling(keras.initializers.Initializer):
    """``keras.initializers.VarianceScaling`` drawn with NumPy on the host.

    Same formulas as Keras (``std = sqrt(scale / fan)``; "uniform" uses
    ``limit = sqrt(3 * scale / fan)``; "normal" is untruncated), but the values come from
    NumPy, which avoids compiling one random kernel per weight shape on the JAX backend
    (building MobileNetV2 drops from ~15 s to well under a second on CPU). Without a seed
    the draws use NumPy's global generator, which ``keras.utils.set_random_seed`` seeds.
    """

    def __init__(
        self,
        scale: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "normal",
        seed: int | None = None,
    ) -> None:
        """Create the initializer.

        Args:
            scale: variance scale (2.0 for He/Kaiming with ReLU).
            mode: "fan_in", "fan_out" or "fan_avg" (fans computed as Keras does).
            distribution: "normal" (untruncated) or "uniform".
            seed: optional seed of a private NumPy generator.
        """
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        if distribution not in ("normal", "uniform"):
            raise ValueError(f"distribution must be normal or uniform, got {distribution!r}")
        self.scale = float(scale)
        self.mode = mode
        self.distribution = distribution
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> Any:
        """Draw a tensor of ``shape``.

        Args:
            shape: the weight shape (kernel layout of Keras: ``(..., in, out)``).
            dtype: the variable dtype (Keras' float type if None).

        Returns:
            A backend tensor.
        """
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2:
            fan_in = fan_out = shape[0] if shape else 1
        else:
            receptive = math.prod(shape[:-2])
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        rng = self._rng if self._rng is not None else np.random
        if self.distribution == "normal":
            values = rng.standard_normal(shape) * math.sqrt(variance)
        else:
            limit = math.sqrt(3.0 * variance)
            values = rng.uniform(-limit, limit, shape)
        return keras.ops.convert_to_tensor(values, dtype=dtype or keras.config.floatx())

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration."""
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
        }


def conv2d(
    x: Any,
    filters: int,
    kernel_size: int,
    strides: int = 1,
    *,
    name: str,
    groups: int = 1,
    use_bias: bool = False,
    kernel_regularizer: Any = None,
) -> Any:
    """Apply a PyTorch-style 2D convolution (padding ``k // 2``).

    Args:
        x: input tensor (channels last).
        filters: output channels.
        kernel_size: square kernel size.
        strides: stride; strided convolutions get explicit symmetric padding.
        name: layer name (the padding layer, if any, is ``name + "_pad"``).
        groups: channel groups (grouped convolution when > 1).
        use_bias: whether the convolution has a bias.
        kernel_regularizer: optional kernel regularizer.

    Returns:
        The output tensor.
    """
    return _torch_padded(
        layers.Conv2D,
        x,
        kernel_size,
        strides,
        name,
        filters=filters,
        groups=groups,
        use_bias=use_bias,
        # torch.nn.init.kaiming_normal_(mode="fan_out"): fan_out = k_h * k_w * out_channels.
        kernel_initializer=HostVarianceScaling(2.0, "fan_out"),
        kernel_regularizer=kernel_regularizer,
    )


def depthwise_conv2d(x: Any, strides: int = 1, *, name: str, kernel_regularizer: Any = None) -> Any:
    """Apply a 3x3 depthwise convolution without bias (padding 1).

    Args:
        x: input tensor (channels last).
        strides: stride; strided convolutions get explicit symmetric padding.
        name: layer name.
        kernel_regularizer: optional regularizer for the depthwise kernel.

    Returns:
        The output tensor.
    """
    return _torch_padded(
        layers.DepthwiseConv2D,
        x,
        3,
        strides,
        name,
        use_bias=False,
        # A Keras depthwise kernel is (k, k, C, 1): its "fan_in" k * k * C is PyTorch's
        # fan-out of the same convolution, so this is kaiming_normal_(mode="fan_out").
        depthwise_initializer=HostVarianceScaling(2.0, "fan_in"),
        depthwise_regularizer=kernel_regularizer,
    )


def _torch_padded(
    conv: type[layers.Layer], x: Any, kernel_size: int, strides: int, name: str, **kwargs: Any
) -> Any:
    """Apply ``conv`` padded by ``k // 2`` (a strided one after ``ZeroPadding2D`` ``name_pad``)."""
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return conv(kernel_size=kernel_size, strides=strides, padding=padding, name=name, **kwargs)(x)


def batch_norm(x: Any, *, name: str) -> Any:
    """Apply BatchNorm with PyTorch's defaults (momentum 0.1 there, 0.9 here; eps 1e-5)."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def relu(x: Any, *, name: str) -> Any:
    """Apply a ReLU layer named ``name``."""
    return layers.ReLU(name=name)(x)


def bn_relu(x: Any, bn_name: str, relu_name: str) -> Any:
    """Apply :func:`batch_norm`, then :func:`relu`."""
    return relu(batch_norm(x, name=bn_name), name=relu_name)


def stack_stages(
    x: Any,
    block: Callable[..., Any],
    stages: Iterable[Sequence[Any]],
    *,
    kernel_regularizer: Any = None,
) -> Any:
    """Apply stages of blocks; block ``j`` of stage ``i`` (from 1) is named ``stage{i}_block{j}``.

    Args:
        x: input tensor (channels last).
        block: called as ``block(x, filters, strides, *extra, name=...,
            kernel_regularizer=...)``; returns the block's output.
        stages: one ``(filters, num_blocks, strides, *extra)`` row per stage. The first
            block of a stage gets ``strides``, the others stride 1.
        kernel_regularizer: passed to every block.

    Returns:
        The output of the last block.
    """
    for stage, (filters, num_blocks, strides, *extra) in enumerate(stages, start=1):
        for index in range(1, num_blocks + 1):
            x = block(
                x,
                filters,
                strides if index == 1 else 1,
                *extra,
                name=f"stage{stage}_block{index}",
                kernel_regularizer=kernel_regularizer,
            )
    return x


def zoo_model(
    body: Callable[[Any, Any], Any],
    name: str,
    num_classes: Any,
    input_shape: Sequence[int | None],
    with_features: bool,
    kernel_regularizer: Any,
    classifier_stddev: float | None = None,
) -> keras.Model:
    """Build a zoo model around ``body``: the part every family builder shares.

    Validates ``num_classes`` and ``input_shape`` before any layer is made, creates the
    input ``"image"``, then ``GlobalAveragePooling2D`` ``"global_pool"`` (the features)
    and the float32 Dense ``"classifier"`` (the logits) after ``body``.

    Args:
        body: ``body(image, regularizer)`` returns the last feature map ``[B, H, W, D]``.
        name: model name.
        num_classes, input_shape, with_features, kernel_regularizer: the builder's
            arguments, as documented in ``keras_kdcap.models.get_model``.
        classifier_stddev: classifier kernel ~ N(0, stddev) if set; PyTorch's
            ``nn.Linear`` default U(-1/sqrt(D), 1/sqrt(D)) if None.

    Returns:
        The functional ``keras.Model``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    reg = keras.regularizers.get(kernel_regularizer)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    features = layers.GlobalAveragePooling2D(name="global_pool")(body(inputs, reg))
    if classifier_stddev is None:
        # nn.Linear's default U(-1/sqrt(D), 1/sqrt(D)): limit sqrt(3 * scale / D), scale 1/3.
        classifier_init = HostVarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    else:
        classifier_init = keras.initializers.RandomNormal(stddev=classifier_stddev)
    logits = layers.Dense(
        num_classes,
        kernel_initializer=classifier_init,
        bias_initializer="zeros",
        kernel_regularizer=reg,
        dtype="float32",
        name="classifier",
    )(features)
    outputs = {"logits": logits, "features": features} if with_features else logits
    return keras.Model(inputs, outputs, name=name)
