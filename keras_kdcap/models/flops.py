"""Analytic cost of a model: multiply-accumulates (MACs) and parameter counts.

``count_flops`` follows the convention of the KD literature's tables (e.g. "resnet20:
41M FLOPs"): one multiply-accumulate counts once, and only convolutions, depthwise
convolutions and dense layers are counted (BatchNorm, activations, additions and pooling
are ignored). Costs are computed from the layers' symbolic shapes, for one image of the
model's input shape; nothing is run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import keras
from keras import layers


def _iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Yield every leaf layer, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def _channels_last(layer: keras.layers.Layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _spatial_size(layer: keras.layers.Layer, shape: tuple[int | None, ...]) -> int:
    """Number of output positions of a conv layer (product of its spatial dims)."""
    dims = shape[1:-1] if _channels_last(layer) else shape[2:]
    if any(d is None for d in dims):
        raise ValueError(
            f"layer {layer.name!r} has unknown spatial dims {shape}; build the model with a "
            "fixed input_shape to count its MACs"
        )
    return math.prod(dims)


def _channels(layer: keras.layers.Layer, shape: tuple[int | None, ...]) -> int:
    """Channel count of a conv layer's input or output shape."""
    return int(shape[-1] if _channels_last(layer) else shape[1])


def count_flops(model: keras.Model) -> int:
    """Count the forward multiply-accumulates (MACs) of one image.

    Args:
        model: a built functional model whose conv/dense layers are each called once
            (every zoo model is).

    Returns:
        Total MACs of all ``Conv*D`` (grouped included), ``DepthwiseConv*D`` and ``Dense``
        layers for a single input of the model's input shape.
    """
    total = 0
    for layer in _iter_layers(model):
        if isinstance(layer, layers.DepthwiseConv2D | layers.DepthwiseConv1D):
            out_shape = tuple(layer.output.shape)
            kernel = math.prod(layer.kernel_size)
            total += _spatial_size(layer, out_shape) * _channels(layer, out_shape) * kernel
        elif isinstance(layer, layers.Conv1D | layers.Conv2D | layers.Conv3D):
            in_shape = tuple(layer.input.shape)
            out_shape = tuple(layer.output.shape)
            per_output = math.prod(layer.kernel_size) * _channels(layer, in_shape) // layer.groups
            total += _spatial_size(layer, out_shape) * _channels(layer, out_shape) * per_output
        elif isinstance(layer, layers.Dense):
            in_shape = tuple(layer.input.shape)
            leading = in_shape[1:-1]
            if any(d is None for d in leading):
                raise ValueError(f"layer {layer.name!r} has unknown input dims {in_shape}")
            total += math.prod(leading) * int(in_shape[-1]) * layer.units
    return int(total)


def count_params(model: keras.Model, trainable_only: bool = True) -> int:
    """Count parameters the way PyTorch's ``sum(p.numel() for p in model.parameters())`` does.

    Args:
        model: a built model.
        trainable_only: if True (default) count trainable weights only, which excludes the
            BatchNorm moving statistics (buffers in PyTorch) and matches published counts.

    Returns:
        The number of scalars in the selected weights.
    """
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(math.prod(w.shape) for w in weights))
