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


def conv_initializer() -> keras.initializers.Initializer:
    """He-normal with fan-out, as ``torch.nn.init.kaiming_normal_(mode="fan_out")``.

    Returns:
        A fresh initializer (``fan_out = k_h * k_w * out_channels``).
    """
    return HostVarianceScaling(scale=2.0, mode="fan_out", distribution="normal")


def depthwise_initializer() -> keras.initializers.Initializer:
    """He-normal with PyTorch's fan-out for a depthwise kernel.

    A Keras depthwise kernel has shape ``(k, k, C, 1)``, so Keras' "fan_in" (``k * k * C``)
    is what PyTorch calls fan-out for the same convolution (``out_channels * k * k``).

    Returns:
        A fresh initializer.
    """
    return HostVarianceScaling(scale=2.0, mode="fan_in", distribution="normal")


def torch_linear_initializer() -> keras.initializers.Initializer:
    """PyTorch's default ``nn.Linear`` weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Returns:
        A fresh initializer.
    """
    return HostVarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def check_num_classes(num_classes: Any) -> int:
    """Validate a class count.

    Args:
        num_classes: the requested number of classes.

    Returns:
        ``num_classes`` as an ``int``.

    Raises:
        ValueError: if it is not an integer >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return num_classes


def _torch_padding(x: Any, kernel_size: int, strides: int, name: str) -> tuple[Any, str]:
    """Pad a strided convolution's input by ``k // 2`` on every side, as PyTorch does.

    Args:
        x: the convolution's input.
        kernel_size: square kernel size.
        strides: stride of the convolution.
        name: the convolution's name (the padding layer is ``name + "_pad"``).

    Returns:
        ``(x, padding)``: the input, padded when strided with ``k > 1``, and the Keras
        ``padding`` mode of the convolution (``"valid"`` after padding, else ``"same"``).
    """
    if strides > 1 and kernel_size > 1:
        return layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x), "valid"
    return x, "same"


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
    x, padding = _torch_padding(x, kernel_size, strides, name)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=conv_initializer(),
        kernel_regularizer=kernel_regularizer,
        name=name,
    )(x)


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
    x, padding = _torch_padding(x, 3, strides, name)
    return layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=depthwise_initializer(),
        depthwise_regularizer=kernel_regularizer,
        name=name,
    )(x)


def batch_norm(x: Any, *, name: str) -> Any:
    """Apply BatchNorm with PyTorch's defaults (momentum 0.1 there, 0.9 here; eps 1e-5).

    Args:
        x: input tensor (channels last).
        name: layer name.

    Returns:
        The output tensor.
    """
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def relu(x: Any, *, name: str) -> Any:
    """Apply a ReLU.

    Args:
        x: input tensor.
        name: layer name.

    Returns:
        The output tensor.
    """
    return layers.ReLU(name=name)(x)


def bn_relu(x: Any, bn_name: str, relu_name: str) -> Any:
    """Apply BatchNorm (PyTorch's defaults, as :func:`batch_norm`), then a ReLU.

    Args:
        x: input tensor (channels last).
        bn_name: name of the BatchNorm layer.
        relu_name: name of the ReLU layer.

    Returns:
        The output tensor.
    """
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


def model_input(input_shape: Sequence[int | None]) -> Any:
    """Create the image input.

    Args:
        input_shape: ``(H, W, C)``, channels last.

    Returns:
        A ``keras.Input`` tensor named ``"image"``.
    """
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return keras.Input(shape=shape, name="image")


def finish_model(
    inputs: Any,
    x: Any,
    num_classes: int,
    *,
    name: str,
    with_features: bool,
    kernel_regularizer: Any = None,
    classifier_initializer: Any = None,
) -> keras.Model:
    """Pool the last feature map, add the ``"classifier"`` Dense and build the model.

    The features are ``GlobalAveragePooling2D(name="global_pool")`` of ``x``; the
    classifier gives float32 logits.

    Args:
        inputs: the model input tensor.
        x: the last feature map ``[B, H, W, D]``.
        num_classes: number of logits.
        name: model name.
        with_features: if True the model outputs ``{"logits", "features": [B, D]}``.
        kernel_regularizer: optional regularizer for the classifier kernel.
        classifier_initializer: kernel initializer; PyTorch's ``nn.Linear`` default if None.

    Returns:
        The functional ``keras.Model``.
    """
    features = layers.GlobalAveragePooling2D(name="global_pool")(x)
    logits = layers.Dense(
        num_classes,
        kernel_initializer=classifier_initializer or torch_linear_initializer(),
        bias_initializer="zeros",
        kernel_regularizer=kernel_regularizer,
        dtype="float32",
        name="classifier",
    )(features)
    outputs = {"logits": logits, "features": features} if with_features else logits
    return keras.Model(inputs, outputs, name=name)
