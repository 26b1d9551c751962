"""CIFAR ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018), RepDistiller style.

Both CIFAR variants replace the ImageNet stem by a 1x1 conv to 24 channels + BN + ReLU at
full resolution (no max-pooling), then run three stages that halve the resolution at their
first block (32 -> 16 -> 8 -> 4), and end with global average pooling and the
``"classifier"`` Dense.

* ``shufflenetv1``: groups ``g = 3``, stage widths 240/480/960 with 4/8/4 bottlenecks. A
  bottleneck is ``gconv1x1-BN-ReLU-shuffle-dwconv3x3-BN-ReLU-gconv1x1-BN`` with a quarter
  of the output width inside (the very first 1x1 conv, on 24 channels, is not grouped);
  the first block of a stage concatenates an average-pooled (3x3, stride 2, zero padding
  counted) copy of its input, the others add the identity; ReLU after the merge.
  Feature dimension ``D = 960``.
* ``shufflenetv2``: net size 1, stage widths 116/232/464 with one down-sampling unit and
  3/7/3 basic units, then a 1x1 conv to 1024 + BN + ReLU. Feature dimension ``D = 1024``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops

from keras_kdcap.models._common import (
    batch_norm,
    bn_relu,
    conv2d,
    depthwise_conv2d,
    relu,
    stack_stages,
    zoo_model,
)

V2_CONFIGS = {
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1.0: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2.0: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


@keras.saving.register_keras_serializable(package="keras_kdcap")
class ChannelShuffle(layers.Layer):
    """Channel shuffle: view channels as ``[groups, C / groups]`` and transpose."""

    def __init__(self, groups: int, **kwargs: Any) -> None:
        """Create the layer.

        Args:
            groups: number of channel groups; must divide the channel count.
            **kwargs: standard ``keras.layers.Layer`` arguments.
        """
        super().__init__(**kwargs)
        self.groups = int(groups)

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Check that ``groups`` divides the (static) channel count."""
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(f"{channels} channels cannot be shuffled in {self.groups} groups")

    def call(self, inputs: Any) -> Any:
        """Shuffle the last axis of a ``[B, H, W, C]`` tensor."""
        shape = ops.shape(inputs)
        height, width, channels = shape[1], shape[2], inputs.shape[-1]
        x = ops.reshape(inputs, (-1, height, width, self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (-1, height, width, channels))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """Same shape as the input."""
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration."""
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="keras_kdcap")
class ChannelSplit(layers.Layer):
    """Split the last axis into the first ``int(C * ratio)`` channels and the rest."""

    def __init__(self, ratio: float = 0.5, **kwargs: Any) -> None:
        """Create the layer.

        Args:
            ratio: fraction of channels in the first output.
            **kwargs: standard ``keras.layers.Layer`` arguments.
        """
        super().__init__(**kwargs)
        self.ratio = float(ratio)

    def _first(self, channels: int) -> int:
        return int(channels * self.ratio)

    def call(self, inputs: Any) -> tuple[Any, Any]:
        """Return ``(inputs[..., :c], inputs[..., c:])``."""
        c = self._first(inputs.shape[-1])
        return inputs[..., :c], inputs[..., c:]

    def compute_output_shape(
        self, input_shape: Sequence[int | None]
    ) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        """Shapes of the two halves."""
        c = self._first(input_shape[-1])
        head = tuple(input_shape[:-1])
        return head + (c,), head + (input_shape[-1] - c,)

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration."""
        return {**super().get_config(), "ratio": self.ratio}


def _stem(inputs: Any, kernel_regularizer: Any) -> Any:
    """1x1 conv to 24 channels + BN + ReLU, full resolution."""
    x = conv2d(inputs, 24, 1, name="stem_conv", kernel_regularizer=kernel_regularizer)
    return bn_relu(x, "stem_bn", "stem_relu")


def _v1_bottleneck(
    x: Any, width: int, strides: int, groups: int, name: str, kernel_regularizer: Any
) -> Any:
    """ShuffleNetV1 unit of output ``width`` (the concatenated shortcut included when strided)."""
    in_channels = x.shape[-1]
    out_channels = width - in_channels if strides == 2 else width
    mid = int(out_channels / 4)
    g1 = 1 if in_channels == 24 else groups
    out = conv2d(x, mid, 1, groups=g1, name=f"{name}_gconv1", kernel_regularizer=kernel_regularizer)
    out = bn_relu(out, f"{name}_bn1", f"{name}_relu1")
    if g1 > 1:
        out = ChannelShuffle(g1, name=f"{name}_shuffle")(out)
    out = depthwise_conv2d(out, strides, name=f"{name}_dw", kernel_regularizer=kernel_regularizer)
    out = bn_relu(out, f"{name}_bn2", f"{name}_relu2")
    out = conv2d(
        out,
        out_channels,
        1,
        groups=groups,
        name=f"{name}_gconv2",
        kernel_regularizer=kernel_regularizer,
    )
    out = batch_norm(out, name=f"{name}_bn3")
    if strides == 2:
        res = layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
        res = layers.AveragePooling2D(3, strides=2, name=f"{name}_pool")(res)
        out = layers.Concatenate(name=f"{name}_concat")([out, res])
    else:
        out = layers.Add(name=f"{name}_add")([out, x])
    return relu(out, name=f"{name}_out")


def build_shufflenetv1(
    groups: int = 3,
    out_channels: Sequence[int] = (240, 480, 960),
    num_blocks: Sequence[int] = (4, 8, 4),
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    kernel_regularizer: Any = None,
    name: str = "shufflenetv1",
) -> keras.Model:
    """Build the CIFAR ShuffleNetV1 (RepDistiller's ``ShuffleV1``).

    Args:
        groups: groups of the pointwise convolutions.
        out_channels: output width of each of the three stages.
        num_blocks: units per stage (the first one down-samples).
        num_classes, input_shape, with_features, kernel_regularizer: as for
            :func:`~keras_kdcap.models.get_model`; the features have ``D = out_channels[-1]``.
        name: model name.

    Returns:
        A functional ``keras.Model`` producing float32 logits.
    """
    stages = [(w, n, 2, groups) for w, n in zip(out_channels, num_blocks, strict=True)]

    def body(x: Any, reg: Any) -> Any:
        return stack_stages(_stem(x, reg), _v1_bottleneck, stages, kernel_regularizer=reg)

    return zoo_model(body, name, num_classes, input_shape, with_features, kernel_regularizer)


def _v2_branch(x: Any, width: int, strides: int, name: str, kernel_regularizer: Any) -> Any:
    """Pointwise conv-BN-ReLU, depthwise conv-BN (``strides``), pointwise conv-BN-ReLU."""
    reg = kernel_regularizer
    out = conv2d(x, width, 1, name=f"{name}_pw1", kernel_regularizer=reg)
    out = bn_relu(out, f"{name}_pw1_bn", f"{name}_relu1")
    out = depthwise_conv2d(out, strides, name=f"{name}_dw", kernel_regularizer=reg)
    out = batch_norm(out, name=f"{name}_dw_bn")
    out = conv2d(out, width, 1, name=f"{name}_pw2", kernel_regularizer=reg)
    return bn_relu(out, f"{name}_pw2_bn", f"{name}_relu2")


def _v2_down_unit(x: Any, out_channels: int, name: str, kernel_regularizer: Any) -> Any:
    """ShuffleNetV2 down-sampling unit: two stride-2 branches, concatenated and shuffled."""
    mid = out_channels // 2
    reg = kernel_regularizer
    left = depthwise_conv2d(x, 2, name=f"{name}_left_dw", kernel_regularizer=reg)
    left = batch_norm(left, name=f"{name}_left_dw_bn")
    left = conv2d(left, mid, 1, name=f"{name}_left_pw", kernel_regularizer=reg)
    left = bn_relu(left, f"{name}_left_pw_bn", f"{name}_left_relu")
    right = _v2_branch(x, mid, 2, f"{name}_right", reg)
    out = layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(out)


def _v2_basic_unit(x: Any, name: str, kernel_regularizer: Any) -> Any:
    """ShuffleNetV2 basic unit: split, transform one half, concatenate, shuffle."""
    keep, branch = ChannelSplit(0.5, name=f"{name}_split")(x)
    out = _v2_branch(branch, branch.shape[-1], 1, name, kernel_regularizer)
    out = layers.Concatenate(name=f"{name}_concat")([keep, out])
    return ChannelShuffle(2, name=f"{name}_shuffle")(out)


def build_shufflenetv2(
    net_size: float = 1.0,
    num_classes: int = 100,
    input_shape: Sequence[int | None] = (32, 32, 3),
    with_features: bool = False,
    kernel_regularizer: Any = None,
    name: str | None = None,
) -> keras.Model:
    """Build the CIFAR ShuffleNetV2 (RepDistiller's ``ShuffleV2`` is ``net_size=1``).

    Args:
        net_size: width setting, one of 0.5, 1, 1.5, 2.
        num_classes, input_shape, with_features, kernel_regularizer: as for
            :func:`~keras_kdcap.models.get_model`; the features have ``D = 1024`` (2048 for size 2).
        name: model name; ``shufflenetv2`` for size 1 if None.

    Returns:
        A functional ``keras.Model`` producing float32 logits.
    """
    if float(net_size) not in V2_CONFIGS:
        raise ValueError(f"net_size must be one of {sorted(V2_CONFIGS)}, got {net_size}")
    config = V2_CONFIGS[float(net_size)]
    if name is None:
        name = "shufflenetv2" if float(net_size) == 1.0 else f"shufflenetv2_x{net_size:g}"
    *stage_widths, last_channels = config["out_channels"]
    stages = tuple(zip(stage_widths, config["num_blocks"], strict=True))

    def body(x: Any, reg: Any) -> Any:
        x = _stem(x, reg)
        for stage, (width, blocks) in enumerate(stages, start=1):
            x = _v2_down_unit(x, width, name=f"stage{stage}_down", kernel_regularizer=reg)
            for block in range(1, blocks + 1):
                x = _v2_basic_unit(x, name=f"stage{stage}_block{block}", kernel_regularizer=reg)
        x = conv2d(x, last_channels, 1, name="head_conv", kernel_regularizer=reg)
        return bn_relu(x, "head_bn", "head_relu")

    return zoo_model(body, name, num_classes, input_shape, with_features, kernel_regularizer)
